"""Incremental state of ingest: how far each table has been read, and what was already written.

A plain "greater than the last watermark" filter loses rows: a transaction that
commits late carries a ``last_updated`` older than rows already extracted. So
each run re-reads an overlap window behind the watermark (on the data's own
clock) and skips the versions it already wrote there, which is why the state is
the watermark *plus* the ``(primary key, last_updated)`` pairs inside the window.
The window includes both its ends, so a run cut short by its row budget in the
middle of rows sharing one ``last_updated`` is continued exactly, even with no
overlap: the next run reads those rows again and skips just the ones written.

The state lives in the newest ingest manifest and nowhere else, so it can only
advance together with the commit point. Everything here is pure: no I/O.
"""
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

from totes.source import SOURCE_TABLES

MANIFEST_FORMAT = "totes.ingest/1"

#: one written row version: (primary key, last_updated).
Version = tuple[int, datetime]


class ManifestFormatError(ValueError):
    """The newest manifest is not one this code can continue from; refusing beats guessing."""


def format_timestamp(moment: datetime) -> str:
    """Render a source ``timestamp(3)`` as the manifests store it (ISO-8601, milliseconds)."""
    return moment.isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class TableWatermark:
    """Where one table's extraction stands after a committed run."""

    #: greatest ``last_updated`` ever extracted; None before any row.
    watermark: datetime | None = None
    #: versions already written with ``last_updated`` in [watermark - overlap, watermark].
    recent_versions: frozenset[Version] = frozenset()

    def since(self, overlap: timedelta) -> datetime | None:
        """Return the inclusive lower bound of the next read, or None to read everything."""
        return None if self.watermark is None else self.watermark - overlap

    def is_new(self, key: int, last_updated: datetime) -> bool:
        """Tell whether a version read inside the window still has to be written."""
        return (key, last_updated) not in self.recent_versions

    def to_json(self) -> dict[str, Any]:
        """Return the manifest fields that carry this state (sorted, so manifests diff well)."""
        return {
            "watermark": None if self.watermark is None else format_timestamp(self.watermark),
            "recent_versions": [[key, format_timestamp(moment)]
                                for key, moment in sorted(self.recent_versions)],
        }

    @classmethod
    def from_json(cls, fields: Mapping[str, Any]) -> "TableWatermark":
        """Rebuild the state from a manifest's table entry."""
        watermark = fields.get("watermark")
        return cls(
            watermark=None if watermark is None else datetime.fromisoformat(watermark),
            recent_versions=frozenset(
                (int(key), datetime.fromisoformat(moment))
                for key, moment in fields.get("recent_versions", ())
            ),
        )


def states_from_manifest(manifest: Mapping[str, Any] | None) -> dict[str, TableWatermark]:
    """Return every source table's state from the newest manifest (None: the very first run).

    A table the manifest does not list (one added to the allow-list later)
    starts from nothing, so it is extracted in full.
    """
    if manifest is None:
        return {table: TableWatermark() for table in SOURCE_TABLES}
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestFormatError(
            f"manifest {manifest.get('run_id')!r} has format {manifest.get('format')!r}, "
            f"expected {MANIFEST_FORMAT!r}"
        )
    tables = manifest.get("tables", {})
    return {table: TableWatermark.from_json(tables[table]) if table in tables
            else TableWatermark() for table in SOURCE_TABLES}


class WatermarkAdvance:
    """Builds a table's next state from the versions one run writes, in bounded memory.

    Versions arrive in ascending ``last_updated`` order (the extract query's
    order), so only those within ``overlap`` of the newest seen need keeping:
    memory is bounded by the rows in one overlap window, not by the table size.
    """

    def __init__(self, previous: TableWatermark, overlap: timedelta) -> None:
        """Start from the state of the previous committed run."""
        self._previous = previous
        self._overlap = overlap
        self._newest = previous.watermark
        self._window: deque[Version] = deque()

    def add(self, versions: Iterable[Version]) -> None:
        """Record versions written by this run, in ascending ``last_updated`` order."""
        for version in versions:
            moment = version[1]
            if self._newest is None or moment > self._newest:
                self._newest = moment
            self._window.append(version)
        if self._newest is not None:
            cutoff = self._newest - self._overlap
            while self._window and self._window[0][1] < cutoff:
                self._window.popleft()

    def result(self) -> TableWatermark:
        """Return the state the next run continues from."""
        if self._newest is None:
            return self._previous
        cutoff = self._newest - self._overlap
        kept = {version for version in self._previous.recent_versions if version[1] >= cutoff}
        kept.update(version for version in self._window if version[1] >= cutoff)
        return TableWatermark(self._newest, frozenset(kept))
