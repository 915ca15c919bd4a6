"""Bulk loading through ``COPY ... FROM STDIN`` (text format), streamed in blocks.

pg8000 sends each item of an iterable stream as one CopyData message, so callers
hand over large text blocks (one per chunk of rows) instead of one row at a time.
Table and column names come from the caller's allow-list and are quoted here.
"""
from typing import Iterable, Sequence

import pg8000.native

from totes.db import quote_ident

NULL = "\\N"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def field(value: object) -> str:
    r"""One value in COPY text format: NULL as ``\\N``, special characters escaped."""
    if value is None:
        return NULL
    return str(value).translate(_ESCAPES)


def rows_block(rows: Iterable[Sequence[object]]) -> str:
    """Encode arbitrary rows (reference data, free text) as one COPY text block."""
    return "".join("\t".join(map(field, row)) + "\n" for row in rows)


def columns_block(columns: Sequence[Sequence[str]]) -> str:
    """Encode column-wise values that are already safe COPY text (digits, dates, codes).

    The fast path for millions of generated order rows: no per-value escaping.
    """
    if not columns or not columns[0]:
        return ""
    return "\n".join(map("\t".join, zip(*columns))) + "\n"


def copy_in(conn: pg8000.native.Connection, table: str, columns: Sequence[str],
            blocks: Iterable[str]) -> None:
    """Stream ``blocks`` of COPY text into ``table`` in one COPY statement."""
    names = ", ".join(quote_ident(column) for column in columns)
    conn.run(f"COPY {quote_ident(table)} ({names}) FROM STDIN", stream=blocks)
