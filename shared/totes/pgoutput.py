"""Decoding PostgreSQL's ``pgoutput`` messages (protocol 1) into the JSON lines ingest writes.

Log-based capture reads a logical replication slot over a plain SQL connection
(``pg_logical_slot_peek_binary_changes(..., 'proto_version', '1', ...)``), which
returns each ``pgoutput`` message as ``bytea``. The message formats are those of
PostgreSQL's "Logical Replication Message Formats" (network byte order, strings
NUL-terminated). No maintained Python decoder exists that works without a
replication connection (the one on PyPI, ``pypgoutput`` 0.0.3, needs psycopg2's
replication protocol and pydantic, and has not been released since 2022), and
protocol 1 is small, so this module decodes it itself.

In protocol 1 every column value is text (the type's output function), so a row
is rendered to the same JSON line the snapshot path's ``row_to_json`` writes:
exactly the contract's columns, the primary key first, timestamps with exactly
three fractional digits, numerics as exact JSON numbers, NULL as ``null``. Values
are checked against their kind, so a value the warehouse could not parse fails
here, naming the table and column, rather than downstream.

Everything here is pure: no I/O.
"""
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Mapping, Union

from totes.errors import InputError
from totes.source import SOURCE_COLUMNS, primary_key

#: pgoutput timestamps count microseconds from the PostgreSQL epoch (2000-01-01 UTC).
PG_EPOCH = datetime(2000, 1, 1)
#: the first byte of each message kind this decoder reads.
CHANGE_KINDS = b"IUDT"


class DecodeError(InputError, ValueError):
    """A message is not valid ``pgoutput`` protocol 1, or a value does not fit its column."""


@dataclass(frozen=True)
class Begin:
    """A transaction starts: its commit LSN, commit time (UTC) and xid."""

    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    """A transaction ends: the LSN of its commit record, the LSN after it, its commit time."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(frozen=True)
class Origin:
    """The transaction came from another node through replication origin ``name``."""

    commit_lsn: int
    name: str


@dataclass(frozen=True)
class Column:
    """One column of a Relation message."""

    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(frozen=True)
class Relation:
    """The shape of a table, sent before the first change to it in a decoding session."""

    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Type:
    """A non-built-in type (an enum) used by a relation's columns."""

    oid: int
    namespace: str
    name: str


#: one column of a tuple: text, None for NULL, or :data:`UNCHANGED` for an unchanged TOAST.
Value = Union[str, None, "Unchanged"]


class Unchanged:
    """An unchanged TOASTed value, which pgoutput does not resend on an update."""

    def __repr__(self) -> str:
        """Name the sentinel in test failures."""
        return "UNCHANGED"


UNCHANGED = Unchanged()


@dataclass(frozen=True)
class Insert:
    """A new row."""

    relation: int
    new: tuple[Value, ...]


@dataclass(frozen=True)
class Update:
    """A changed row; ``old`` is its key (``K``) or whole old row (``O``) when sent."""

    relation: int
    new: tuple[Value, ...]
    old: tuple[Value, ...] | None = None
    old_kind: str | None = None


@dataclass(frozen=True)
class Delete:
    """A deleted row: its key (``K``) or, under REPLICA IDENTITY FULL, its old row (``O``)."""

    relation: int
    old: tuple[Value, ...]
    old_kind: str


@dataclass(frozen=True)
class Truncate:
    """Relations emptied by TRUNCATE (their rows' keys are not sent)."""

    options: int
    relations: tuple[int, ...]


Message = Union[Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate]


class _Reader:
    """Reads the protocol's fixed-width integers, strings and tuples off one message."""

    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 1

    def take(self, size: int) -> bytes:
        end = self._at + size
        if end > len(self._data):
            raise DecodeError(f"message {self._data[:1]!r} ends early ({len(self._data)} bytes)")
        chunk, self._at = self._data[self._at:end], end
        return chunk

    def int(self, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.take(size), "big", signed=signed)

    def time(self) -> datetime:
        return PG_EPOCH + timedelta(microseconds=self.int(8, signed=True))

    def string(self) -> str:
        end = self._data.find(b"\x00", self._at)
        if end < 0:
            raise DecodeError(f"message {self._data[:1]!r} has an unterminated string")
        text, self._at = self._data[self._at:end], end + 1
        return text.decode("utf-8")

    def tuple(self) -> tuple[Value, ...]:
        # The hot loop of decoding (one pass per column of every change): plain indexing.
        data, at = self._data, self._at
        values: list[Value] = []
        count = self.int(2)
        at += 2
        try:
            for _ in range(count):
                kind = data[at]
                if kind == 0x74:  # t: Int32 length, then the text
                    end = at + 5 + int.from_bytes(data[at + 1:at + 5], "big")
                    if end > len(data):
                        raise IndexError
                    values.append(data[at + 5:end].decode("utf-8"))
                    at = end
                elif kind == 0x6E:  # n: NULL
                    values.append(None)
                    at += 1
                elif kind == 0x75:  # u: unchanged TOAST
                    values.append(UNCHANGED)
                    at += 1
                else:
                    raise DecodeError(f"tuple column kind {bytes([kind])!r} is not protocol 1 "
                                      "text")
        except IndexError:
            raise DecodeError(f"message {data[:1]!r} ends early ({len(data)} bytes)") from None
        self._at = at
        return tuple(values)

    def end(self, message: Message) -> Message:
        if self._at != len(self._data):
            raise DecodeError(f"{type(message).__name__} message has "
                              f"{len(self._data) - self._at} trailing bytes")
        return message


def _relation(reader: _Reader) -> Relation:
    oid, namespace, name = reader.int(4), reader.string(), reader.string()
    identity = chr(reader.int(1))
    columns = []
    for _ in range(reader.int(2)):
        flags = reader.int(1)
        columns.append(Column(reader.string(), reader.int(4), reader.int(4, signed=True),
                              bool(flags & 1)))
    return Relation(oid, namespace, name, identity, tuple(columns))


def _update(reader: _Reader) -> Update:
    relation = reader.int(4)
    marker = reader.take(1)
    old = old_kind = None
    if marker in (b"K", b"O"):
        old_kind, old = marker.decode(), reader.tuple()
        marker = reader.take(1)
    if marker != b"N":
        raise DecodeError(f"Update message has {marker!r} where the new tuple (N) belongs")
    return Update(relation, reader.tuple(), old, old_kind)


def decode(data: bytes) -> Message:
    """Decode one ``pgoutput`` protocol 1 message, or raise :class:`DecodeError`."""
    if not data:
        raise DecodeError("empty message")
    kind, reader = data[:1], _Reader(bytes(data))
    message: Message
    if kind == b"B":
        message = Begin(reader.int(8), reader.time(), reader.int(4))
    elif kind == b"C":
        message = Commit(reader.int(1), reader.int(8), reader.int(8), reader.time())
    elif kind == b"O":
        message = Origin(reader.int(8), reader.string())
    elif kind == b"R":
        message = _relation(reader)
    elif kind == b"Y":
        message = Type(reader.int(4), reader.string(), reader.string())
    elif kind == b"I":
        relation = reader.int(4)
        if reader.take(1) != b"N":
            raise DecodeError("Insert message without its new tuple (N)")
        message = Insert(relation, reader.tuple())
    elif kind == b"U":
        message = _update(reader)
    elif kind == b"D":
        relation, marker = reader.int(4), reader.take(1)
        if marker not in (b"K", b"O"):
            raise DecodeError(f"Delete message has {marker!r} where its old key (K/O) belongs")
        message = Delete(relation, reader.tuple(), marker.decode())
    elif kind == b"T":
        count, options = reader.int(4), reader.int(1)
        message = Truncate(options, tuple(reader.int(4) for _ in range(count)))
    else:
        raise DecodeError(f"message kind {kind!r} is not one pgoutput protocol 1 sends "
                          "without the messages or streaming options")
    return reader.end(message)


def lsn_text(lsn: int) -> str:
    """Render an LSN as PostgreSQL does (``16/B374D848``)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """Parse PostgreSQL's ``pg_lsn`` notation (``16/B374D848``)."""
    high, separator, low = str(text).partition("/")
    if not separator or not re.fullmatch(r"[0-9A-Fa-f]{1,8}", high) \
            or not re.fullmatch(r"[0-9A-Fa-f]{1,8}", low):
        raise ValueError(f"{text!r} is not an LSN")
    return (int(high, 16) << 32) | int(low, 16)


# --- rendering a decoded row as the contract's JSON line ---------------------------------

_INTEGER = re.compile(r"-?[0-9]+")
_NUMERIC = re.compile(r"-?[0-9]+(\.[0-9]+)?")
#: ``timestamp_out`` under DateStyle ISO: fractional digits only when non-zero, trailing
#: zeros dropped. Years beyond 9999, BC dates and infinities do not match: refused.
_TIMESTAMP = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}) ([0-9]{2}:[0-9]{2}:[0-9]{2})"
                        r"(?:\.([0-9]{1,6}))?")
_BOOLEAN = {"t": "true", "f": "false"}


def _integer(text: str) -> str | None:
    return text if _INTEGER.fullmatch(text) else None


def _numeric(text: str) -> str | None:
    return text if _NUMERIC.fullmatch(text) else None


def _timestamp(text: str) -> str | None:
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        return None
    fraction = (match[3] or "").ljust(3, "0")[:3]  # to_char's MS: milliseconds, truncated
    return f'"{match[1]}T{match[2]}.{fraction}"'


def _text(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


#: kind -> the JSON text of one non-NULL value of it, or None when the value does not fit.
_RENDERERS: Mapping[str, Callable[[str], str | None]] = {
    "int": _integer, "money": _numeric, "bool": _BOOLEAN.get, "timestamp": _timestamp,
    "text": _text, "date": _text,
}


@dataclass(frozen=True)
class RowShape:
    """Where each contract column of a table sits in its Relation message's tuples."""

    table: str
    positions: Mapping[str, int]
    #: whether the table's replica identity holds its primary key (DEFAULT, FULL, or an
    #: index with the key): only then do its deletes and key changes carry the old key.
    identity_has_key: bool = True
    #: per output column, key first: name, its JSON key text, kind and tuple position.
    _plan: tuple[tuple[str, str, str, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Work out once per table what :meth:`line` does for every row."""
        key = primary_key(self.table)
        kinds = SOURCE_COLUMNS[self.table]
        plan = tuple((name, json.dumps(name) + ":", kinds[name], self.positions[name])
                     for name in (key, *(name for name in kinds if name != key)))
        object.__setattr__(self, "_plan", plan)

    @classmethod
    def of(cls, relation: Relation) -> "RowShape":
        """Map the contract's columns of ``relation``'s table, refusing one that is missing.

        Whether the replica identity holds the key comes from the columns' flags (FULL
        flags every column), not from the old rows that arrive: an update that leaves the
        identity's columns alone sends none, even when it changed the key.
        """
        at = {column.name: index for index, column in enumerate(relation.columns)}
        missing = [name for name in SOURCE_COLUMNS[relation.name] if name not in at]
        if missing:
            raise DecodeError(f"{relation.name} as the slot describes it lacks the column(s) "
                              f"{', '.join(missing)} the pipeline reads")
        return cls(relation.name, {name: at[name] for name in SOURCE_COLUMNS[relation.name]},
                   relation.columns[at[primary_key(relation.name)]].is_key)

    def key(self, values: tuple[Value, ...]) -> int:
        """The primary key in a tuple (a full row, or a replica-identity key tuple)."""
        text = values[self.positions[primary_key(self.table)]]
        if not isinstance(text, str) or not _INTEGER.fullmatch(text):
            # Row values stay out of errors (they reach the logs): the column names it.
            raise DecodeError(f"{self.table} change without a usable primary key "
                              f"({primary_key(self.table)} is "
                              f"{'NULL' if text is None else 'not an integer'})")
        return int(text)

    def unchanged(self, values: tuple[Value, ...]) -> tuple[str, ...]:
        """The contract columns an update did not resend (unchanged TOASTed values)."""
        return tuple(name for name, _, _, position in self._plan
                     if values[position] is UNCHANGED)

    def line(self, values: tuple[Value, ...], fallback: tuple[Value, ...] | None = None) -> bytes:
        """Render a row as the contract's JSON line: primary key first, compact, one line.

        An unchanged TOASTed value is taken from ``fallback`` (the old row, sent under
        REPLICA IDENTITY FULL, or the values the caller found for it); without it the
        row cannot be rendered whole: refused. Errors name the table and column, never
        the value (row data must not reach the logs).
        """
        parts = []
        for name, json_key, kind, position in self._plan:
            value = values[position]
            if value is UNCHANGED and fallback is not None:
                value = fallback[position]
            if value is UNCHANGED:
                raise DecodeError(
                    f"{self.table}.{name} was not resent by an update (an unchanged TOASTed "
                    "value) and no earlier value of it was found")
            rendered = "null" if value is None else _RENDERERS[kind](str(value))
            if rendered is None:
                raise DecodeError(f"{self.table}.{name} holds a value that is not a {kind} "
                                  "the warehouse can carry (not shown: row values stay out of "
                                  "logs)")
            parts.append(json_key + rendered)
        return ("{" + ",".join(parts) + "}\n").encode("utf-8")
