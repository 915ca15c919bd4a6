"""Exact JSON Lines: what goes into the ingestion bucket comes back with the same meaning.

Decimals are written as JSON numbers with their exact digits (no float on the
way in or out: readers use ``parse_float=Decimal``), timestamps as ISO-8601 with
milliseconds, NULL as null. Strings go through ``json.dumps``, so quotes,
newlines and any unicode survive byte-for-byte.
"""
import json
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Iterable, Iterator, Sequence


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


def decode_lines(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    """Yield row dicts from JSON Lines, numbers with a fraction as exact Decimals."""
    for line in lines:
        if line.strip():
            yield json.loads(line, parse_float=Decimal)
