"""Object key layout shared by the buckets: browsable by table and date, ordered by time.

Run stamps are compact UTC (``20241115T142009123Z``): no ``:`` or ``+`` for S3
events to URL-encode, and lexical order is time order, so "the latest" is a
listing away and never needs a clock comparison.

Anyone who may write to a bucket can drop any object into it, so a key is only
ever taken for what it looks like when it matches its layout exactly: ASCII
digits and hex (``re.ASCII``: a Unicode digit is not a digit here), the whole key
(``fullmatch``: no trailing newline), and date folders equal to the run's date.
"""
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

MANIFEST_PREFIX = "_manifests/"
#: where ingest runs claim the one successor of a manifest (:func:`successor_claim_key`).
CLAIM_PREFIX = "_claims/"
REFERENCE_PREFIX = "_reference/"
#: where a revision's processed manifests live (``_revisions/<nnnn>/_manifests/...``).
REVISIONS_PREFIX = "_revisions/"
SWEEP_PREFIX = "_sweeps/"
_STAMP_FORMAT = "%Y%m%dT%H%M%S"
_RUN = r"(?P<date>\d{4}/\d{2}/\d{2})/(?P<stamp>\d{8}T\d{9}Z)-(?P<suffix>[0-9a-f]+)"
_RUN_ID = re.compile(r"(?P<stamp>\d{8}T\d{9}Z)-(?P<suffix>[0-9a-f]+)", re.ASCII)
_MANIFEST_KEY = re.compile(rf"_manifests/{_RUN}\.json", re.ASCII)
_DATA_KEY = re.compile(
    rf"(?P<table>[a-z_]+)/{_RUN}(?P<deleted>-deleted)?-\d{{5}}\.jsonl", re.ASCII)
_SWEEP_KEY = re.compile(
    rf"_sweeps/(?P<table>[a-z_]+)/{_RUN}(?P<captured>-captured)?\.keys\.gz", re.ASCII)
_PROCESSED_MANIFEST_KEY = re.compile(
    rf"(?:_revisions/(?P<revision>\d{{4,}})/)?_manifests/{_RUN}\.json", re.ASCII)
_PROCESSED_KEY = re.compile(
    rf"(?P<table>[a-z_]+)/{_RUN}-[0-9a-f]+-\d{{5}}(?P<deleted>\.deleted)?\.parquet", re.ASCII)
_REFERENCE_KEY = re.compile(rf"_reference/(?P<table>[a-z_]+)/{_RUN}-[0-9a-f]+\.parquet", re.ASCII)


@dataclass(frozen=True, order=True)
class RunId:
    """Identifies one run: when it started (UTC, ms) and a random suffix against collisions."""

    stamp: str
    suffix: str

    @property
    def started_at(self) -> datetime:
        """The run's start as an aware UTC datetime."""
        return parse_stamp(self.stamp)

    @property
    def date_path(self) -> str:
        """``yyyy/mm/dd`` of the run's start, for browsable prefixes."""
        return f"{self.stamp[0:4]}/{self.stamp[4:6]}/{self.stamp[6:8]}"

    def __str__(self) -> str:
        """Render as ``<stamp>-<suffix>``, the form used in keys and logs."""
        return f"{self.stamp}-{self.suffix}"


def stamp(moment: datetime) -> str:
    """Format an aware datetime as a compact UTC stamp with milliseconds."""
    moment = moment.astimezone(timezone.utc)
    return f"{moment.strftime(_STAMP_FORMAT)}{moment.microsecond // 1000:03d}Z"


def new_run_id(moment: datetime | None = None) -> RunId:
    """Return a fresh run id: the start (now unless given) and 8 random hex digits.

    The random suffix keeps keys unique even for two runs started in the same
    millisecond (a retry racing a scheduled run), so a key is never reused.
    """
    return RunId(stamp(moment or datetime.now(timezone.utc)), secrets.token_hex(4))


def parse_stamp(text: str) -> datetime:
    """Inverse of :func:`stamp`."""
    moment = datetime.strptime(text[:15], _STAMP_FORMAT).replace(tzinfo=timezone.utc)
    return moment.replace(microsecond=int(text[15:18]) * 1000)


def data_key(table: str, run: RunId, part: int, extension: str) -> str:
    """Key of one data object: ``<table>/<yyyy>/<mm>/<dd>/<stamp>-<suffix>-<part>.<ext>``."""
    return f"{table}/{run.date_path}/{run}-{part:05d}.{extension}"


def manifest_key(run: RunId) -> str:
    """Key of a run's manifest, under its own prefix so S3 events can select it."""
    return f"{MANIFEST_PREFIX}{run.date_path}/{run}.json"


def _run_of(match: "re.Match[str] | None") -> RunId | None:
    """The run a full match of a key layout names, when its date folders are the run's date."""
    if match is None:
        return None
    run = RunId(match["stamp"], match["suffix"])
    return run if match["date"] == run.date_path else None


def _table_and_run(layout: "re.Pattern[str]", key: str, flag: str | None = None,
                   flagged: bool = False) -> tuple[str, RunId] | None:
    """(table, run) of a key that fully matches ``layout``, its group ``flag`` set as wanted.

    Every per-table layout (ingest data, sweeps, processed objects, reference
    snapshots) is read this way, so each refuses a key off its layout alike.
    """
    match = layout.fullmatch(key)
    run = _run_of(match)
    if match is None or run is None or (flag is not None and bool(match[flag]) != flagged):
        return None
    return match["table"], run


def successor_claim_key(previous_manifest: str | None) -> str:
    """Key of the claim on the one run that may commit after ``previous_manifest``.

    Ingest creates it with ``IfNoneMatch`` before its manifest, so of two runs that
    started from the same manifest exactly one commits. None (no manifest yet) has
    its own key; any other key that is not a manifest key is a programming error.
    """
    if previous_manifest is None:
        return f"{CLAIM_PREFIX}first.json"
    run = parse_manifest_key(previous_manifest)
    if run is None:
        raise ValueError(f"{previous_manifest} is not a manifest key")
    return f"{CLAIM_PREFIX}{run.date_path}/{run}.json"


def parse_manifest_key(key: str) -> RunId | None:
    """Return the run a manifest key names, or None for any other key (a stray object)."""
    return _run_of(_MANIFEST_KEY.fullmatch(key))


def is_manifest_key(key: str) -> bool:
    """Tell whether ``key`` is exactly a manifest key (what listings of ``_manifests/`` keep)."""
    return parse_manifest_key(key) is not None


def parse_sweep_key(key: str, *, captured: bool = False) -> tuple[str, RunId] | None:
    """Return (table, run) of a key sweep's key (or, with ``captured``, a captured-keys key).

    None for any other key: a manifest that points elsewhere is refused by its reader.
    """
    return _table_and_run(_SWEEP_KEY, key, "captured", captured)


def parse_data_key(key: str, *, deleted: bool = False) -> tuple[str, RunId] | None:
    """Return (table, run) of an ingest data key (or, with ``deleted``, a deletions key).

    None for any other key: a manifest that lists another key is refused by its reader.
    """
    return _table_and_run(_DATA_KEY, key, "deleted", deleted)


def parse_processed_manifest_key(key: str) -> RunId | None:
    """Return the run a processed manifest key names (any revision's), or None for another key."""
    return _run_of(_PROCESSED_MANIFEST_KEY.fullmatch(key))


def processed_manifest_revision(key: str) -> int | None:
    """Return the revision whose prefix a processed manifest key is under (0: none), else None."""
    match = _PROCESSED_MANIFEST_KEY.fullmatch(key)
    if match is None:
        return None
    return int(match["revision"] or 0)


def parse_processed_key(key: str, *, deleted: bool = False) -> tuple[str, RunId] | None:
    """Return (table, run) of a processed Parquet key (or, with ``deleted``, a deletions key).

    The layout :func:`attempt_data_key` writes; None for any other key, which a
    processed manifest's reader refuses to follow.
    """
    return _table_and_run(_PROCESSED_KEY, key, "deleted", deleted)


def parse_reference_key(key: str) -> tuple[str, RunId] | None:
    """Return (table, run) of a reference snapshot's key (:func:`reference_key`), else None."""
    return _table_and_run(_REFERENCE_KEY, key)


def parse_run_id(text: str) -> RunId:
    """Inverse of ``str(RunId)``: ``<stamp>-<suffix>`` back to the run it names."""
    match = _RUN_ID.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a run id")
    return RunId(match["stamp"], match["suffix"])


def attempt_data_key(table: str, run: RunId, attempt: str, part: int, extension: str) -> str:
    """Key of a data object written by one attempt at processing ``run``.

    ``<table>/<yyyy>/<mm>/<dd>/<stamp>-<suffix>-<attempt>-<part>.<ext>``: a retry after
    a crash uses a new attempt id, so it never collides with the failed attempt's orphans.
    """
    return f"{table}/{run.date_path}/{run}-{attempt}-{part:05d}.{extension}"


def reference_key(table: str, run: RunId, attempt: str) -> str:
    """Key of a reference snapshot: ``_reference/<table>/<yyyy>/<mm>/<dd>/<run>-<attempt>``."""
    return f"{REFERENCE_PREFIX}{table}/{run.date_path}/{run}-{attempt}.parquet"


def deletions_key(table: str, run: RunId, part: int) -> str:
    """Key of a run's deletion records for ``table``, beside its data objects.

    ``<table>/<yyyy>/<mm>/<dd>/<stamp>-<suffix>-deleted-<part>.jsonl``.
    """
    return f"{table}/{run.date_path}/{run}-deleted-{part:05d}.jsonl"


def sweep_key(table: str, run: RunId) -> str:
    """Key of a key sweep's state: ``_sweeps/<table>/<yyyy>/<mm>/<dd>/<run>.keys.gz``."""
    return f"{SWEEP_PREFIX}{table}/{run.date_path}/{run}.keys.gz"


def captured_keys_key(table: str, run: RunId) -> str:
    """Key of the keys a run captured: ``_sweeps/<table>/<yyyy>/<mm>/<dd>/<run>-captured.keys.gz``.

    The next key sweep reads them: a row captured and deleted between two sweeps
    is in neither sweep's list.
    """
    return f"{SWEEP_PREFIX}{table}/{run.date_path}/{run}-captured.keys.gz"
