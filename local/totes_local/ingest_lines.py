"""JSON Lines exactly as ingest writes them, built from Python rows: for fixtures and benchmarks.

Ingest itself never encodes a value (PostgreSQL renders every row); tests and
benchmarks that need ingest files without a database build them here, with the
same meaning: decimals as JSON numbers with their exact digits, timestamps as
ISO-8601 with milliseconds, NULL as null, strings byte-for-byte.
"""
import json
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Iterable, Sequence


class UnencodableValueError(TypeError):
    """A database value of a type the format does not define (a new column type upstream)."""


def encode_value(value: Any) -> str:
    """Return the JSON text of one database value."""
    if value is None or isinstance(value, (str, bool, int)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise UnencodableValueError(f"non-finite numeric {value} cannot be stored exactly")
        return format(value, "f")
    if isinstance(value, datetime):
        return json.dumps(value.isoformat(timespec="milliseconds"))
    if isinstance(value, (date, time)):
        return json.dumps(value.isoformat())
    raise UnencodableValueError(f"cannot encode {type(value).__name__} value exactly")


def encode_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """Encode rows (tuples in ``columns`` order) as UTF-8 JSON Lines, one object per row."""
    keys = [json.dumps(column) + ":" for column in columns]
    lines = []
    for row in rows:
        fields = ",".join(key + encode_value(value) for key, value in zip(keys, row))
        lines.append("{" + fields + "}\n")
    return "".join(lines).encode("utf-8")
