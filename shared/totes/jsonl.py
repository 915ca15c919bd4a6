"""Reading the ingestion bucket's JSON Lines with their exact meaning.

PostgreSQL renders each row (see :mod:`totes.extract`): decimals as JSON numbers
with their exact digits, timestamps as ISO-8601 with milliseconds, NULL as null.
Readers must not let a float in on the way back: numbers with a fraction are
parsed as ``Decimal``.
"""
import json
from decimal import Decimal
from typing import Any, Iterable, Iterator


def decode_lines(lines: Iterable[bytes | str]) -> Iterator[dict[str, Any]]:
    """Yield row dicts from JSON Lines, numbers with a fraction as exact Decimals."""
    for line in lines:
        if line.strip():
            yield json.loads(line, parse_float=Decimal)
