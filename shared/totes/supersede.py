"""Operator decisions that release a wedged stage or redo its output, deleting nothing.

Both buckets are immutable: objects are created once, bucket policies deny
deletes and overwrites, and Object Lock keeps every version. So a recovery that
used to delete (a processed manifest, to transform again) instead adds an
object that says what supersedes what. Those objects are *markers*, written by a
person with ``totes supersede`` under ``_supersede/`` in the processed bucket
(the functions' roles cannot write there) and read by transform and load at the
start of every invocation. There are two kinds:

* A **revision** (``_supersede/revisions/<nnnn>.json``) says "transform again
  from ingest manifest X on". Revision 0 is the pipeline's first pass: a
  processed manifest has its ingest manifest's key. Revision n writes its
  processed manifests under ``_revisions/<nnnn>/`` instead, so they never collide
  with the ones they supersede. For each ingest manifest the revision in force is
  the newest one that starts at or before it.
* A **skip** (``_supersede/skips/<stage>/<nnnn>/<manifest key>``) says "stage S
  must pass over manifest K at revision n" (its input cannot be processed and a
  person decided not to wait for a fix). Transform commits an empty processed
  manifest for it that names the marker; load records it as loaded with nothing.
  A skip applies to one revision only: transforming again gives the manifest
  another chance.

A malformed marker is an input error: both stages stop until a person fixes it,
rather than guessing what was meant.
"""
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Iterator, Mapping

from totes import keys, storage, timestamps
from totes.errors import InputError
from totes.manifest import CapturePoint, IngestManifest, ProcessedManifest
from totes.observability import service_logger

MARKER_PREFIX = "_supersede/"
REVISION_MARKERS = f"{MARKER_PREFIX}revisions/"
SKIP_MARKERS = f"{MARKER_PREFIX}skips/"
#: where revision n >= 1 keeps its processed manifests: ``_revisions/<nnnn>/_manifests/...``.
REVISIONS_PREFIX = keys.REVISIONS_PREFIX
MARKER_FORMAT = "totes.supersede/1"
#: the stages a skip can release.
STAGES = ("transform", "load")

logger = service_logger()


class MarkerError(InputError, ValueError):
    """A marker object cannot be read or contradicts its key; names the key."""


def revision_prefix(number: int) -> str:
    """Key prefix of revision ``number``'s processed manifests (empty for revision 0)."""
    return f"{REVISIONS_PREFIX}{number:04d}/" if number else ""


def _manifest_under(prefix: str) -> storage.KeyTest:
    """Accept exactly the processed manifest keys of the revision whose prefix is ``prefix``."""
    return lambda key: key.startswith(prefix) and keys.is_manifest_key(key[len(prefix):])


def _manifest(key: Any, what: str) -> str:
    if not isinstance(key, str) or keys.parse_manifest_key(key) is None:
        raise MarkerError(f"{what} {key!r} is not an ingest manifest key "
                          f"(_manifests/yyyy/mm/dd/<stamp>-<id>.json)")
    return key


def _number(value: Any, what: str, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise MarkerError(f"{what} {value!r} is not a whole number from {least}")
    return value


@dataclass(frozen=True, kw_only=True)
class Marker:
    """What every decision records besides itself: why, when, and who (from STS).

    A marker checks itself when made, so a nonsensical one is refused before it is
    written, and one written by hand is refused when read.
    """

    kind: ClassVar[str]
    #: the marker's key, formatted from its fields.
    key_format: ClassVar[str]
    reason: str
    created_at: str
    created_by: str

    def __post_init__(self) -> None:
        """Refuse a marker without a reason: whoever reads it later must know why."""
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise MarkerError("a marker needs a reason: say why, for whoever reads it later")
        object.__setattr__(self, "reason", self.reason.strip())

    @property
    def key(self) -> str:
        """The marker's key, which its content must agree with."""
        return self.key_format.format(**asdict(self))

    def to_json(self) -> dict[str, Any]:
        """The marker's document: its format, its kind and its fields."""
        return {"format": MARKER_FORMAT, "kind": self.kind, **asdict(self)}


@dataclass(frozen=True, kw_only=True)
class Revision(Marker):
    """Transform again from ingest manifest ``from_manifest`` on, as revision ``number``."""

    kind: ClassVar[str] = "revision"
    key_format: ClassVar[str] = REVISION_MARKERS + "{number:04d}.json"
    number: int
    from_manifest: str

    def __post_init__(self) -> None:
        """Check the number and the manifest key, then the common fields."""
        _number(self.number, "revision", 1)
        _manifest(self.from_manifest, "from_manifest")
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class Skip(Marker):
    """Stage ``stage`` passes over ingest manifest ``manifest`` at revision ``revision``."""

    kind: ClassVar[str] = "skip"
    key_format: ClassVar[str] = SKIP_MARKERS + "{stage}/{revision:04d}/{manifest}"
    stage: str
    revision: int
    manifest: str

    def __post_init__(self) -> None:
        """Check the stage, the revision and the manifest key, then the common fields."""
        if self.stage not in STAGES:
            raise MarkerError(f"stage {self.stage!r} is not one of {', '.join(STAGES)}")
        _number(self.revision, "revision", 0)
        _manifest(self.manifest, "manifest")
        super().__post_init__()


#: every kind of marker, by the ``kind`` its document names.
MARKER_KINDS: dict[str, type[Revision] | type[Skip]] = {"revision": Revision, "skip": Skip}


@dataclass(frozen=True)
class Segment:
    """A range of ingest manifest keys, ``[start, end)``, and the revision in force there."""

    start: str | None
    end: str | None
    revision: int


def parse_marker(key: str, document: Any) -> Revision | Skip:
    """Read one marker object, checking its fields and that its content agrees with its key."""
    if not isinstance(document, Mapping) or document.get("format") != MARKER_FORMAT:
        raise MarkerError(f"{key}: not a {MARKER_FORMAT} marker")
    kind = MARKER_KINDS.get(str(document.get("kind")))
    if kind is None:
        raise MarkerError(f"{key}: unknown kind {document.get('kind')!r}")
    try:
        marker = kind(**{name.name: document[name.name] for name in fields(kind)})
    except MarkerError as error:
        raise MarkerError(f"{key}: {error}") from None
    except KeyError as error:
        raise MarkerError(f"{key}: malformed marker: no field {error}") from None
    if marker.key != key:
        raise MarkerError(f"{key}: its content says it belongs at {marker.key}")
    return marker


@dataclass(frozen=True)
class Markers:
    """Every operator decision in force: the revisions and the skips, with what they imply."""

    revisions: tuple[Revision, ...] = ()
    skips: Mapping[tuple[str, int, str], Skip] = field(default_factory=dict)

    def revision_for(self, ingest_key: str) -> int:
        """The revision in force for an ingest manifest: the newest starting at or before it."""
        return max((r.number for r in self.revisions if r.from_manifest <= ingest_key), default=0)

    def processed_key(self, ingest_key: str) -> str:
        """Where the processed manifest of ``ingest_key`` is (or will be) in force."""
        return revision_prefix(self.revision_for(ingest_key)) + ingest_key

    def skip(self, stage: str, ingest_key: str) -> Skip | None:
        """The skip of ``ingest_key`` by ``stage`` at the revision in force, if there is one."""
        return self.skips.get((stage, self.revision_for(ingest_key), ingest_key))

    def skipped_at_any_revision(self, stage: str, ingest_key: str) -> bool:
        """Whether ``stage`` was told to skip ``ingest_key`` at any revision, in force or not.

        For a manifest that is gone: a revision declared after its skip cannot bring it back.
        """
        return any((skipper, key) == (stage, ingest_key) for skipper, _, key in self.skips)

    def newest_revision(self) -> int:
        """The highest revision declared (0 when none)."""
        return max((r.number for r in self.revisions), default=0)

    def segments(self) -> list[Segment]:
        """The key ranges of each revision in force, oldest first, covering every key."""
        result: list[Segment] = []
        start, current = None, 0
        for bound in sorted({r.from_manifest for r in self.revisions}):
            number = self.revision_for(bound)
            if number != current:
                result.append(Segment(start, bound, current))
                start, current = bound, number
        result.append(Segment(start, None, current))
        return result

    def newest_processed(self, bucket: str) -> str | None:
        """The newest ingest manifest whose processed manifest in force exists.

        Each revision's range is searched newest first with a bounded descent of
        its date folders, so the cost stays a few listings however long the
        history is.
        """
        for segment in reversed(self.segments()):
            prefix = revision_prefix(segment.revision)
            below = None if segment.end is None else prefix + segment.end
            found = storage.newest_key(bucket, prefix + keys.MANIFEST_PREFIX, below,
                                       _manifest_under(prefix))
            if found is not None and (segment.start is None or found >= prefix + segment.start):
                return found[len(prefix):]
        return None

    def is_newest_processed(self, bucket: str, ingest_key: str, processed_key: str) -> bool:
        """Tell whether :meth:`newest_processed` would answer ``ingest_key``, in one listing.

        ``processed_key`` is where a warm container saw its processed manifest committed.
        It must still be where these markers put it, no revision may start after it (a
        later revision's range is searched first), and one listing must prove it is the
        newest processed manifest under its revision's prefix; else False, and the
        caller searches as a cold container does.
        """
        if processed_key != self.processed_key(ingest_key) or any(
                revision.from_manifest > ingest_key for revision in self.revisions):
            return False
        prefix = revision_prefix(self.revision_for(ingest_key))
        return storage.is_newest_key(bucket, prefix + keys.MANIFEST_PREFIX, processed_key,
                                     _manifest_under(prefix))

    def processed_after(self, bucket: str, after: str | None) -> Iterator[str]:
        """Yield, oldest first, the ingest manifests after ``after`` whose processed one exists."""
        for segment in self.segments():
            if after is not None and segment.end is not None and segment.end <= after:
                continue
            prefix = revision_prefix(segment.revision)
            for key in storage.list_keys(bucket, prefix + keys.MANIFEST_PREFIX,
                                         None if after is None else prefix + after,
                                         _manifest_under(prefix)):
                ingest_key = key[len(prefix):]
                if segment.end is not None and ingest_key >= segment.end:
                    break
                if segment.start is None or ingest_key >= segment.start:
                    yield ingest_key


def read_markers(bucket: str) -> Markers:
    """Read every marker in ``bucket`` (a handful: one per decision a person made)."""
    revisions: list[Revision] = []
    skips: dict[tuple[str, int, str], Skip] = {}
    for key in storage.list_keys(bucket, MARKER_PREFIX):
        try:
            document = storage.read_json(bucket, key)
        except ValueError as error:  # a DamagedObjectError, or too large: each names the object
            raise MarkerError(str(error)) from None
        marker = parse_marker(key, document)
        if isinstance(marker, Revision):
            revisions.append(marker)
        else:
            skips[(marker.stage, marker.revision, marker.manifest)] = marker
    numbers = [revision.number for revision in revisions]
    if numbers != list(range(1, len(numbers) + 1)):
        raise MarkerError(f"revision markers must be numbered 1, 2, ... without gaps; "
                          f"found {numbers}")
    return Markers(tuple(revisions), skips)


def declare_revision(bucket: str, start: str, reason: str, created_by: str) -> Revision:
    """Write the next revision marker: transform again from ingest manifest ``start`` on.

    The conditional write makes two people declaring at once safe: one of them
    gets :class:`storage.ObjectAlreadyExistsError` and tries again.
    """
    markers = read_markers(bucket)
    revision = Revision(number=markers.newest_revision() + 1, from_manifest=start,
                        reason=reason, created_at=timestamps.now_text(), created_by=created_by)
    storage.put_new_json(bucket, revision.key, revision.to_json())
    return revision


def write_skip(bucket: str, stage: str, manifest: str, reason: str, created_by: str) -> Skip:
    """Write a skip of ``manifest`` by ``stage``, at the revision now in force for it.

    A transform skip of a manifest transform is already past would be ignored, so
    it is refused instead of written.
    """
    markers = read_markers(bucket)
    skip = Skip(stage=stage, revision=markers.revision_for(_manifest(manifest, "manifest")),
                manifest=manifest, reason=reason, created_at=timestamps.now_text(),
                created_by=created_by)
    if stage == "transform":  # whether load is past it is in the warehouse; harmless there
        done = markers.newest_processed(bucket)
        if done is not None and done >= manifest:
            raise MarkerError(f"transform is already past {manifest} (newest done: {done}); "
                              "a skip would change nothing. Is it load that is stuck?")
    storage.put_new_json(bucket, skip.key, skip.to_json())
    return skip


def skipped_manifest(ingest_bucket: str, skip: Skip, reference: Mapping[str, str | None],
                     reference_sha256: Mapping[str, str] | None = None) -> ProcessedManifest:
    """The processed manifest that stands for a run an operator skipped: no tables.

    Transform commits it, carrying ``reference`` (and their SHA-256s, which the next
    transform checks the snapshots against) on; load records it in place of
    a processed manifest it could not read. The capture point is the ingest
    run's, so the audit compares against the source as of that run and reports
    what the skip lost. The ingest manifest itself may be what cannot be read:
    then its start comes from its key and its capture point is unknown.
    """
    run = keys.parse_manifest_key(skip.manifest)
    if run is None:  # a Skip checks its manifest key when made
        raise MarkerError(f"{skip.key}: {skip.manifest} is not an ingest manifest key")
    ingest: IngestManifest | None = None
    capture = CapturePoint()
    try:
        ingest = IngestManifest.read(storage.read_json(ingest_bucket, skip.manifest),
                                     skip.manifest)
        capture = CapturePoint.of(ingest)
    except ValueError as error:
        logger.warning("skipped run's ingest manifest unreadable; its capture point is unknown",
                       extra={"manifest": skip.manifest, "error": str(error)})
    return ProcessedManifest(
        run_id=str(run),
        ingest_manifest=skip.manifest,
        ingest_started_at=(ingest.started_at if ingest is not None
                           else timestamps.instant_text(run.started_at)),
        transformed_at=timestamps.now_text(),
        tables={},
        reference=dict(reference),
        reference_sha256=dict(reference_sha256 or {}),
        capture=capture,
        skipped_by=skip.key,
    )


def release_command(stage_name: str, manifest: str, processed_bucket: str) -> str:
    """The command that releases a stage stuck at ``manifest`` by skipping it (runbook).

    Logged with the failure, so the person paged has it at hand; skipping loses
    that run's data, so the runbook says what to try first.
    """
    return (f"totes supersede skip --stage {stage_name} --manifest {manifest} "
            f"--processed-bucket {processed_bucket} --reason '<why>'")
