"""Change capture by transaction visibility: which rows a run must read, never by their clock.

Each ingest run reads in one REPEATABLE READ snapshot and records it
(``pg_current_snapshot()``: ``xmin:xmax:xip,...`` as 64-bit ``xid8`` values).
A row version must be read by the next run when the transaction that wrote it
(the row's ``xmin``) was not visible in that snapshot. Which rows those are is
decided from the snapshot's ``xmin``, the oldest transaction still running when
it was taken, not from its ``xmax`` and ``xip`` list: ``pg_current_snapshot()``
lists only top-level transactions, so a row written inside a savepoint (a
subtransaction, with its own xid, invisible in the list) of a transaction open
at the time would otherwise be missed for good. Every xid at or after the
``xmin`` is read again; everything before it had committed (or aborted) before
the snapshot. The price is a few rows read twice while a long transaction stays
open, which downstream deduplicates; nothing is ever missed, whatever a row's
``last_updated`` says. So the state of a table is a constant size: a snapshot
and, while a row budget cuts a pass short, a resume key.

A row's ``xmin`` is a 32-bit xid that wraps around; the snapshot is 64-bit.
:func:`xmin_window` turns the comparison into modular distance from the current
snapshot's ``xmax``, exact across epoch boundaries: every visible row was written
before ``xmax``, within 2^31 transactions of it unless frozen. A frozen row's raw
xmin may alias to a recent xid (its true age above 2^32): it is then read again,
never skipped. The special xids 1 and 2 (bootstrap, frozen) are always old.

Everything here is pure: no I/O.
"""
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

from totes import timestamps
from totes.errors import InputError

#: xids wrap at 2^32; xid8 values count the epochs above that.
XID_MODULUS = 1 << 32
#: the lowest normal xid: 0 is invalid, 1 bootstrap, 2 frozen.
FIRST_NORMAL_XID = 3
#: how much earlier than S3's stamp of the last manifest the server may seem to have started and
#: still be believed to have restarted since (:func:`restarted_since_written`): the skew allowed
#: between S3's clock and the database's. It errs towards believing a restart, which costs a
#: re-sync: a restore taken for none could have its slot advanced past changes.
RESTART_MARGIN = timedelta(seconds=2)


class SnapshotFormatError(InputError, ValueError):
    """A recorded snapshot is not ``xmin:xmax:xip,...`` with ``xmin <= xmax``."""


@dataclass(frozen=True, order=True)
class Snapshot:
    """A PostgreSQL ``pg_snapshot``: what one run saw, in 64-bit transaction ids."""

    xmin: int
    xmax: int
    xip: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Snapshot":
        """Parse ``pg_current_snapshot()::text`` (``xmin:xmax:xip1,xip2``)."""
        try:
            xmin, xmax, xip = str(text).split(":")
            snapshot = cls(int(xmin), int(xmax),
                           tuple(int(xid) for xid in xip.split(",") if xid))
        except ValueError:
            raise SnapshotFormatError(f"{text!r} is not a pg_snapshot") from None
        if not 0 < snapshot.xmin <= snapshot.xmax or any(
                not snapshot.xmin <= xid < snapshot.xmax for xid in snapshot.xip):
            raise SnapshotFormatError(f"{text!r} is not a consistent pg_snapshot")
        return snapshot

    def __str__(self) -> str:
        """Render as PostgreSQL does, so the manifest holds the server's own notation."""
        return f"{self.xmin}:{self.xmax}:{','.join(str(xid) for xid in self.xip)}"

    def sees(self, xid: int) -> bool:
        """Tell whether transaction ``xid`` (64-bit) had committed or aborted before this snapshot.

        Exact for a top-level transaction (``xip`` lists those); a subtransaction's
        own xid is judged by its parent's, which is what the log names.
        """
        return xid < self.xmin or (xid < self.xmax and xid not in self.xip)


@dataclass(frozen=True)
class XminWindow:
    """The rows of a run: those whose 32-bit ``xmin`` lies within ``width`` xids before ``xmax``.

    In SQL (see :mod:`totes.extract`): ``xmin >= 3 AND
    (xmax32 - xmin + 2^32) % 2^32 <= width``, where ``xmax32`` is the current
    snapshot's ``xmax`` modulo 2^32. ``width`` is the distance from the current
    ``xmax`` back to the floor (the previous snapshot's ``xmin``).
    """

    xmax32: int
    width: int

    def contains(self, xid32: int) -> bool:
        """Tell whether a row written by ``xid32`` is read: the SQL predicate, in Python."""
        return xid32 >= FIRST_NORMAL_XID and (self.xmax32 - xid32) % XID_MODULUS <= self.width


def xmin_window(floor: Snapshot, current: Snapshot) -> XminWindow:
    """Return the window of xids not visible in ``floor`` as seen from ``current``.

    A floor newer than the current snapshot (a replica restored from an older
    backup, a manifest from another database) cannot be continued safely: refused.
    """
    if floor.xmin > current.xmax:
        raise SnapshotFormatError(
            f"the recorded snapshot {floor} is ahead of the database's {current}: is this "
            "the same database (or a replica restored from an older backup)?")
    return XminWindow(current.xmax % XID_MODULUS, current.xmax - floor.xmin)


@dataclass(frozen=True)
class SourceIdentity:
    """Which PostgreSQL cluster, and which history of it, a run read: recorded in its manifest.

    ``system_identifier`` (``pg_control_system()``) is fixed when a cluster is made
    and kept by its physical copies (replicas, backups restored); ``timeline``
    (the one WAL is written on, :func:`totes.extract.source_identity`) goes up
    each time one of them is promoted or recovered to a point in time. Either is
    None when the login may not read it.
    ``started`` (``pg_postmaster_start_time()``, readable by every login) changes
    whenever the server starts, which a restore from a cold backup or a storage
    snapshot must do: it keeps both of the others. None in manifests written
    before it was recorded. Together with the snapshot's ``xmax`` they tell a run
    that the database it reads may not be the history its cursors were taken in
    (:func:`resync_reason`).
    """

    system_identifier: str | None = None
    timeline: int | None = None
    started: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the manifest's ``source`` object."""
        return {"system_identifier": self.system_identifier, "timeline": self.timeline,
                "started": self.started}

    @classmethod
    def from_json(cls, fields: Mapping[str, Any]) -> "SourceIdentity":
        """Rebuild an identity from its manifest fields."""
        identifier, timeline = fields.get("system_identifier"), fields.get("timeline")
        started = fields.get("started")
        return cls(None if identifier is None else str(identifier),
                   None if timeline is None else int(timeline),
                   None if started is None else str(started))


def resync_reason(previous: Snapshot | None, previous_source: SourceIdentity | None,
                  current: Snapshot, source: SourceIdentity) -> str | None:
    """Say why the cursors of ``previous`` cannot be continued at ``current``, or None.

    A restore from a backup, a point-in-time recovery, a failover to a replica
    that was behind, or a secret pointed at a lagging replica all take the
    transaction counter back: rows written since the previous run may carry xids
    its cursors count as already read. Detected by a changed system identifier
    or timeline (when both runs could read them), by ``xmax`` going backwards, or
    by the server having started since the previous run: once the restored
    server has used more xids than the restore took back, ``xmax`` is ahead again
    and only the restart is left to tell, and a restart cannot be told from a
    restore (a clean restart costs one needless re-read).
    """
    if previous is None:
        return None
    before = previous_source or SourceIdentity()
    another = other_cluster(before, source)
    if another is not None:
        return another
    if None not in (before.timeline, source.timeline) and before.timeline != source.timeline:
        return (f"the source's timeline changed from {before.timeline} to {source.timeline} "
                "(a failover, promotion or point-in-time recovery)")
    if current.xmax < previous.xmax:
        return (f"the source's transaction counter went back from {previous.xmax} to "
                f"{current.xmax} (restored from a backup, or a replica that is behind)")
    if server_restarted(before, source):
        return (f"the source's server restarted (at {source.started}, was running since "
                f"{before.started}): a restore from a backup cannot be told from a restart")
    return None


def other_cluster(before: SourceIdentity | None, source: SourceIdentity) -> str | None:
    """Say why ``source`` is not the cluster ``before`` was read from, or None (or unknown).

    Only the system identifier tells: replicas and restored backups keep it, so a
    run's cursors and positions mean nothing on a cluster with another one.
    """
    if before is None or None in (before.system_identifier, source.system_identifier) or (
            before.system_identifier == source.system_identifier):
        return None
    return (f"the source is another cluster (system identifier {source.system_identifier}, "
            f"was {before.system_identifier})")


def server_restarted(before: SourceIdentity | None, source: SourceIdentity) -> bool:
    """Say whether the server started since ``before`` was read (False when either is unknown).

    A restore from a cold backup or a storage snapshot keeps the system identifier
    and the timeline: once the restored server's counters (xids, WAL) have passed
    the last run's, its start is all that tells the history changed.
    """
    return (before is not None and None not in (before.started, source.started)
            and before.started != source.started)


def restarted_since_written(before: SourceIdentity | None, source: SourceIdentity,
                            written: Callable[[], datetime]) -> bool:
    """Say whether the server started, or was promoted, after the manifest recording ``before``.

    Log-based capture lets a restart turn two refusals (a position beyond the WAL,
    a slot ahead of it) into a re-sync, so it must not take the manifest's word
    for it: a forged or stray manifest records whatever ``started`` it likes. The
    evidence is ``written()``, when S3 stored the manifest (set by S3, not by its
    writer; asked only when the recorded start differs, after a restart), against
    the server's own start: a restore starts the server after the last manifest
    was written, a forged or stray manifest is written after the server started.
    A start up to :data:`RESTART_MARGIN` before S3's stamp still counts (and S3
    stamps whole seconds, truncated): erring towards a restart, so only a manifest
    written within about three seconds of the server's start could pass for one,
    and never a restore for none. A standby promoted without a
    restart shows no new start, only a later timeline than the manifest's (a
    forger would have to write an earlier one, on a cluster promoted before):
    taken for a restart too, as advancing a slot synced to it could skip changes.
    A manifest from another cluster (a restore or a promotion keeps the system
    identifier) is never one a restart explains.
    """
    if before is None or other_cluster(before, source) is not None:
        return False
    was, now = before.timeline, source.timeline
    if was is not None and now is not None and now > was:
        return True
    if not server_restarted(before, source) or source.started is None:
        return False
    return timestamps.parse_instant(source.started) > written() - RESTART_MARGIN


def full_xid(xid32: int, current: Snapshot) -> int:
    """Return the 64-bit xid of a visible row's 32-bit ``xmin`` (for logs and tests)."""
    return current.xmax - (current.xmax % XID_MODULUS - xid32) % XID_MODULUS


def nearest_xid(xid32: int, current: Snapshot) -> int:
    """Return the 64-bit xid of ``xid32`` within 2^31 of ``current``'s ``xmax``, either side.

    For a transaction that may have begun after ``current`` was taken (one the log
    decodes), where :func:`full_xid` would read it as 2^32 xids old.
    """
    ahead = (xid32 - current.xmax) % XID_MODULUS
    return current.xmax + (ahead - XID_MODULUS if ahead >= XID_MODULUS // 2 else ahead)


@dataclass(frozen=True)
class TableCursor:
    """Where one table's capture stands after a committed run: a constant-size state.

    ``since`` is the snapshot whose invisible rows are still to be read (None
    before the first read: everything). A table carried over from the earlier
    ``last_updated`` watermark format has ``since_last_updated`` instead, read
    once by that rule to bridge the upgrade without a gap. While a row budget
    has cut a pass short, ``resume_after`` is the last key written (the pass goes
    on above it) and ``resume_since`` the snapshot the cut pass had reached for
    keys at or below it: when the pass ends, that older snapshot is the new
    floor, so rows changed meanwhile below the key are read again, not lost.
    """

    since: Snapshot | None = None
    since_last_updated: datetime | None = None
    resume_after: int | None = None
    resume_since: Snapshot | None = None

    def after_pass(self, current: Snapshot, *, cut_at: int | None) -> "TableCursor":
        """Return the state after this run read the table (``cut_at``: last key, if cut)."""
        reached = self.resume_since or current
        if cut_at is None:
            return TableCursor(since=reached)
        return TableCursor(self.since, self.since_last_updated, cut_at, reached)

    def to_json(self) -> dict[str, Any]:
        """Return the manifest fields of the cursor."""
        return {
            "since": None if self.since is None else str(self.since),
            "since_last_updated": (None if self.since_last_updated is None
                                   else timestamps.database_text(self.since_last_updated)),
            "resume_after": self.resume_after,
            "resume_since": None if self.resume_since is None else str(self.resume_since),
        }

    @classmethod
    def from_json(cls, fields: Mapping[str, Any]) -> "TableCursor":
        """Rebuild a cursor from its manifest fields."""
        def snapshot(name: str) -> Snapshot | None:
            value = fields.get(name)
            return None if value is None else Snapshot.parse(value)

        since_last_updated = fields.get("since_last_updated")
        resume_after = fields.get("resume_after")
        return cls(
            since=snapshot("since"),
            since_last_updated=(None if since_last_updated is None
                                else timestamps.parse_database_time(since_last_updated)),
            resume_after=None if resume_after is None else int(resume_after),
            resume_since=snapshot("resume_since"),
        )
