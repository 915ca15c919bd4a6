"""The one S3 writer and reader: every object is created once and never overwritten.

Writes are conditional (``IfNoneMatch="*"``), so immutability holds even against
a retry or a concurrent run, not just by convention; the deployed buckets' policies
refuse any other write. Each write carries a SHA-256 checksum, which S3 verifies and
which Object Lock's default retention (on both buckets unless turned off) requires.
Clients are created plainly so the standard ``AWS_ENDPOINT_URL`` points them at a
local moto server.

Every request names the account that must own its bucket (``ExpectedBucketOwner``,
added by the client itself, so no call can forget it): the account the function runs
in, from the invocation's context (:func:`expected_owner`). A bucket name that
resolves to another account's bucket (a typo, a sniped name) is then refused by S3
before it receives a byte of ours or feeds us one of its own.

A manifest records the SHA-256 of each object it lists (:func:`checksum`, the same
value S3 verified when the object was created). Readers given it hash the bytes as
they stream and refuse an object that is not that one (:class:`ObjectChangedError`),
whatever replaced it since: a later version, a restore, another writer.

The JSON objects the stages hand to each other (manifests, claims, operators' markers)
are read whole and trusted as they stand, so they are checked twice on the way in
(:func:`read_json`): S3's own checksum of the object, asked for with every read
(``ChecksumMode``), must match the body received; and the document's own seal, a
SHA-256 over its canonical JSON that :func:`put_new_json` writes into it (``sha256``),
must match its fields. So a manifest edited, truncated or replaced in the bucket is
an input error naming the key and what is wrong, never read as it stands. A document
without a seal (written before it was recorded) is read as it always was.

A listing that looks for objects of one layout (manifests) takes an ``accept``
test from :mod:`totes.keys` and keeps only the keys that pass it: anything else
under the prefix (a note an operator uploaded, a forged key) is a *stray*,
reported once per invocation (:func:`totes.observability.stray_object`) and
never read, so it can neither stop a stage nor steer it.
"""
import base64
import hashlib
import json
import platform
import shutil
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import (IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence,
                    cast)
from urllib.parse import urlparse

import boto3
import botocore.config
from botocore.exceptions import ClientError, FlexibleChecksumError
from botocore.response import StreamingBody

from totes import config
from totes.errors import InputError, TransientError
from totes.keys import MANIFEST_PREFIX, is_manifest_key
from totes.observability import invocation_account, stray_object

if TYPE_CHECKING:  # boto3-stubs, a development dependency: the Lambda runtime has no stubs
    from botocore.model import OperationModel
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ListObjectsV2RequestPaginateTypeDef

    from totes.manifest import DataFile

#: tells a key of the layout a listing looks for from a stray object.
KeyTest = Callable[[str], bool]
#: the largest JSON object read whole: manifests and markers are kilobytes.
MAX_JSON_BYTES = 64 << 20


#: S3's error codes for an object that is not there.
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
#: what S3 answers for a missing object to a caller without s3:ListBucket on its key, as
#: transform is for extracts and load for processed files (they may list only manifests).
DENIED_CODES = frozenset({"AccessDenied", "403"})
#: a named object that cannot be read, whatever the retries: a person must act.
UNREADABLE_CODES = MISSING_CODES | DENIED_CODES


class ObjectAlreadyExistsError(TransientError, FileExistsError):
    """A conditional write found the key taken: the object is never replaced."""


#: the field of a JSON object :func:`put_new_json` writes that holds the object's own seal.
SEAL_FIELD = "sha256"


class DamagedObjectError(InputError, ValueError):
    """A JSON object is not one the pipeline wrote whole: a person must find out why.

    Not JSON (truncated, another tool's), a body S3's checksum does not match, or
    fields that do not match the seal the pipeline wrote into it. The message names
    the object and what is wrong; nothing is read from it.
    """


class ObjectTooLargeError(InputError, ValueError):
    """An object read whole is larger than any the pipeline writes: a person must look at it."""


class ObjectChangedError(InputError):
    """An object's bytes are not those its manifest recorded: a person must find out why.

    The message names the bucket, the key, the SHA-256 expected and the one found.
    """

    def __init__(self, bucket: str, key: str, expected: str, found: str, *,
                 where: str | None = None):
        """Say which object differs from its manifest's record, and how.

        ``where`` names it when it is not in S3 (a file of a local copy of a bucket).
        """
        where = where or f"s3://{bucket}/{key}"
        super().__init__(
            f"{where} is not the object its manifest lists: SHA-256 expected "
            f"{expected}, found {found} (a later version replaced it?); nothing was committed "
            "from it (docs/runbook.md, \"An object is not the one its manifest lists\")")
        self.bucket, self.key, self.expected, self.found = bucket, key, expected, found


def bucket_and_key(location: str) -> tuple[str, str]:
    """Split an ``s3://bucket/key`` location (Iceberg's, also ``s3a``/``s3n``) into its parts."""
    parsed = urlparse(location)
    if parsed.scheme not in ("s3", "s3a", "s3n"):
        raise ValueError(f"{location}: the lake writes to S3 only")
    return parsed.netloc, parsed.path.lstrip("/")


def expected_owner() -> str | None:
    """The account every bucket the functions use must belong to (None: not checked).

    ``EXPECTED_BUCKET_OWNER`` when set (tests, local runs); otherwise the account
    of the function's own ARN in the invocation's context, read without a call.
    Outside an invocation with neither (local tools), no owner is asked for.
    """
    return config.expected_bucket_owner() or invocation_account()


def _ask_owner(params: dict[str, Any], model: "OperationModel", context: dict[str, Any],
               **_: Any) -> None:
    """Add ``ExpectedBucketOwner`` to every request whose operation takes it.

    The owner asked for is kept in the request's context for :func:`_explain_denial`.
    """
    owner, shape = expected_owner(), model.input_shape
    if owner and shape is not None and "ExpectedBucketOwner" in shape.members:
        params.setdefault("ExpectedBucketOwner", owner)
        context["totes_expected_owner"] = params["ExpectedBucketOwner"]


def _explain_denial(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """Say, in a 403's message, that it is also S3's answer for a bucket of another account."""
    error = parsed.get("Error", {})
    owner = context.get("totes_expected_owner")
    if owner and error.get("Code") in DENIED_CODES:
        error["Message"] = (
            f"{error.get('Message') or 'Access Denied'}: the request required the bucket to be "
            f"owned by account {owner} (ExpectedBucketOwner), and S3 answers 403 as well when "
            "it is owned by another account: check which account owns the bucket name before "
            "the role's permissions (docs/runbook.md, \"A bucket of another account\")")


#: seconds an S3 connection may take to open, and (urllib3 applies it there too) a request's
#: body may stall while being sent. botocore's default (60 s, tried up to five times)
#: outlasts ingest's 180 s timeout: in a VPC without a route to S3 (no gateway endpoint, no
#: NAT), a run would end "Task timed out" and say nothing else. 15 s still lets a congested
#: upload pause, and a stalled one is retried; a response keeps botocore's read timeout.
S3_CONNECT_TIMEOUT_SECONDS = 15.0


@lru_cache(maxsize=1)
def s3_client() -> "S3Client":
    """Return the process-wide S3 client (created once per Lambda container).

    Its own event hooks ask every request for the bucket owner (:func:`expected_owner`)
    and explain a denial, so no caller can leave the check out; an S3 that cannot be
    reached fails in seconds (:data:`S3_CONNECT_TIMEOUT_SECONDS`), naming its endpoint.

    Its User-Agent header is built here once (``Boto3/``, ``Python/``, the platform; the
    SDK adds ``Botocore/``): otherwise the SDK assembles and sanitises it from some thirty
    components twice for every request, about a millisecond on a busy machine.
    """
    client = boto3.client("s3", config=botocore.config.Config(
        connect_timeout=S3_CONNECT_TIMEOUT_SECONDS,
        user_agent=f"Boto3/{boto3.__version__} Python/{platform.python_version()} "
                   f"{platform.system()}/{platform.release()}"))
    client.meta.events.register("before-parameter-build.s3", _ask_owner)
    client.meta.events.register("after-call.s3", _explain_denial)
    return client


def checksum(body: bytes | IO[bytes]) -> str:
    """The SHA-256 of ``body`` as S3 writes it (base64): sent with a put, kept in manifests.

    ``body`` may be a seekable file (a spooled key list): it is hashed whole, a chunk
    at a time, and left at its start for the put that sends it.
    """
    if isinstance(body, bytes):
        return base64.b64encode(hashlib.sha256(body).digest()).decode()
    digest = hashlib.sha256()
    body.seek(0)
    for chunk in iter(lambda: body.read(1 << 20), b""):
        digest.update(chunk)
    body.seek(0)
    return base64.b64encode(digest.digest()).decode()


def put_new_object(bucket: str, key: str, body: bytes | IO[bytes], content_type: str,
                   sha256: str | None = None) -> None:
    """Create ``key`` with ``body``; raise ObjectAlreadyExistsError if it already exists.

    ``body`` may be a seekable file, so a large object is streamed, never held whole.
    ``sha256`` (:func:`checksum` of ``body``) is sent for S3 to verify; without it the
    SDK computes it.
    """
    given: dict[str, Any] = {} if sha256 is None else {"ChecksumSHA256": sha256}
    try:
        s3_client().put_object(
            Bucket=bucket, Key=key, Body=body, ContentType=content_type, IfNoneMatch="*",
            ChecksumAlgorithm="SHA256", **given,
        )
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in (
            "PreconditionFailed", "ConditionalRequestConflict"
        ):
            raise ObjectAlreadyExistsError(f"s3://{bucket}/{key} already exists") from None
        raise


class BackgroundPuts:
    """Conditional writes (:func:`put_new_object`) made by worker threads, a bounded few at once.

    The caller prepares the next object (or reads the source) while S3 stores the
    earlier ones; each request's wait for S3 overlaps the others instead of adding
    up. At most ``in_flight`` bodies are held, so memory stays a few objects' worth.
    An object is known to exist only once :meth:`close` has returned without error:
    a commit point (a manifest) is written after it, never before.
    """

    def __init__(self, in_flight: int) -> None:
        """Write with up to ``in_flight`` requests at once (threads start with the first)."""
        self._in_flight = in_flight
        self._pool: ThreadPoolExecutor | None = None
        self._pending: "deque[Future[None]]" = deque()

    def put(self, bucket: str, key: str, body: bytes, content_type: str) -> str:
        """Start writing ``body`` to ``key`` once fewer than ``in_flight`` writes are pending.

        Return its SHA-256 (:func:`checksum`, for the manifest). An earlier write's
        error is raised here when waiting for it frees the place.
        """
        sha256 = checksum(body)
        while len(self._pending) >= self._in_flight:
            self._pending.popleft().result()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._in_flight, thread_name_prefix="totes-put")
        self._pending.append(self._pool.submit(put_new_object, bucket, key, body, content_type,
                                               sha256))
        return sha256

    def close(self, *, quietly: bool = False) -> None:
        """Wait for every write started and end the threads; raise the first write's error.

        Every write has ended when this returns or raises. The error is not raised
        with ``quietly`` (the caller is failing already, and its own error is the one
        to report).
        """
        error: BaseException | None = None
        while self._pending:
            try:
                self._pending.popleft().result()
            except Exception as failed:  # noqa: B902 - the first is re-raised below
                error = error or failed
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if error is not None and not quietly:
            raise error


def spooled(bucket: str, key: str, sha256: str | None = None) -> IO[bytes]:
    """Download an object into a temporary file and return it at its start (the caller closes it).

    For readers that must seek (Parquet reads its footer first): the object is held on
    disk, not in memory, whatever its size. With ``sha256``, the bytes are checked
    against it on the way (:func:`open_stream`).
    """
    spool = tempfile.TemporaryFile()
    try:
        shutil.copyfileobj(open_stream(bucket, key, sha256), spool, 1 << 20)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


class Prefetch:
    """Objects to be read in a known order, downloaded by worker threads a few ahead of the reader.

    Each download (:func:`spooled`) overlaps the reader's own work and waits (a COPY
    into PostgreSQL) instead of adding to them; at most ``ahead`` objects are
    downloaded or held beyond the one being read, on disk. An object asked for out of
    order is downloaded then and there. :meth:`close` waits for the downloads started
    and deletes what was not read, so nothing outlives the reader.
    """

    def __init__(self, bucket: str, keys: Iterable[str], ahead: int,
                 sha256: Mapping[str, str | None] | None = None) -> None:
        """Start downloading the first ``ahead`` of ``keys``.

        A key ``sha256`` gives a SHA-256 for is checked against it (:func:`spooled`).
        """
        self._bucket = bucket
        self._sha256 = dict(sha256 or {})
        self._waiting = deque(keys)
        self._ahead = ahead
        self._started: dict[str, "Future[IO[bytes]]"] = {}
        self._held: dict[str, IO[bytes]] = {}  # downloaded by :meth:`hold`, not yet read
        self._pool = ThreadPoolExecutor(ahead, thread_name_prefix="totes-get")
        self._start_more()

    @classmethod
    def of_files(cls, bucket: str, files: "Sequence[DataFile]", ahead: int) -> "Prefetch":
        """Read the objects a manifest lists, in its order, each checked against its SHA-256.

        Load and publish both read a manifest's files so; one constructor keeps them alike.
        """
        return cls(bucket, [file.key for file in files], ahead,
                   {file.key: file.sha256 for file in files})

    def _start_more(self) -> None:
        while self._waiting and len(self._started) < self._ahead:
            key = self._waiting.popleft()
            if key not in self._started and key not in self._held:
                self._started[key] = self._pool.submit(spooled, self._bucket, key,
                                                       self._sha256.get(key))

    def open(self, key: str) -> IO[bytes]:
        """The object ``key`` spooled, at its start (the caller closes it); its error if it failed.

        The next downloads start before this waits for this one.
        """
        held = self._held.pop(key, None)
        if held is not None:
            return held
        started = self._started.pop(key, None)
        self._start_more()
        if started is None:
            return spooled(self._bucket, key, self._sha256.get(key))
        return started.result()

    def hold(self, key: str) -> None:
        """Download ``key`` now (or wait for its download) and keep it on disk until opened.

        For a reader that commits in several steps (the publish, one Iceberg commit per
        table): holding every object, in order, before the first commit checks each
        against its SHA-256 first, so a replaced one is refused
        (:class:`ObjectChangedError`) with nothing committed, not after the tables read
        before it. The downloads still run ``ahead`` at once; memory stays bounded, the
        objects wait on disk.
        """
        if key not in self._held:
            self._held[key] = self.open(key)

    def close(self) -> None:
        """Wait for the downloads started, delete the objects not read, and end the threads."""
        self._waiting.clear()
        for held in self._held.values():
            held.close()
        self._held.clear()
        for started in self._started.values():
            if started.exception() is None:  # waits; a failed object not read concerns no one
                started.result().close()
        self._started.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "Prefetch":
        """Use as a context manager: :meth:`close` on the way out, whatever happened."""
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        """Close (see :meth:`close`)."""
        self.close()


def put_new_object_on(puts: BackgroundPuts | None, bucket: str, key: str, body: bytes,
                      content_type: str) -> str:
    """Create ``key`` once: now, or, with ``puts``, started there (it exists once that closes).

    Return its SHA-256 (:func:`checksum`), for the manifest that lists it.
    """
    if puts is not None:
        return puts.put(bucket, key, body, content_type)
    sha256 = checksum(body)
    put_new_object(bucket, key, body, content_type, sha256)
    return sha256


def _seal(document: Mapping[str, Any]) -> str:
    """The SHA-256 (base64) of ``document``'s canonical JSON: sorted keys, no white space."""
    return checksum(json.dumps(document, sort_keys=True, separators=(",", ":"),
                               ensure_ascii=True).encode())


def put_new_json(bucket: str, key: str, document: Any) -> None:
    """Create a JSON object (such as a manifest) once; an object is sealed (:func:`read_json`).

    The seal, :data:`SEAL_FIELD`, is the SHA-256 of the document's other fields in
    canonical form, so a reader finds any field edited, added or taken away since.
    """
    if isinstance(document, Mapping):
        if SEAL_FIELD in document:
            raise ValueError(f"{key}: a document to be sealed has a {SEAL_FIELD!r} field already")
        plain = json.loads(json.dumps(document))  # sealed as a reader parses it: text keys, lists
        document = {**plain, SEAL_FIELD: _seal(plain)}
    body = json.dumps(document, indent=1, sort_keys=True).encode()
    put_new_object(bucket, key, body, "application/json")


def parse_json(body: bytes, where: str) -> Any:
    """Parse a JSON object's ``body`` read from ``where`` and check its seal, if it has one.

    Return the document without its seal. A body that is not JSON, or whose fields
    do not match its seal, is a :class:`DamagedObjectError` naming ``where``: a
    document written before seals were recorded (none) is returned as it stands.
    """
    try:
        document = json.loads(body)
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        raise DamagedObjectError(
            f"{where} is not JSON ({error}): truncated, or not written by the pipeline; "
            "nothing was read from it (docs/runbook.md, \"A manifest or marker is "
            "damaged\")") from None
    if not isinstance(document, dict) or SEAL_FIELD not in document:
        return document
    recorded = document.pop(SEAL_FIELD)
    found = _seal(document)
    if recorded != found:
        raise DamagedObjectError(
            f"{where} is not the document the pipeline wrote: its fields have SHA-256 {found}, "
            f"its seal ({SEAL_FIELD}) says {recorded!r}: edited or replaced since; nothing was "
            "read from it (docs/runbook.md, \"A manifest or marker is damaged\")")
    return document


def read_bytes(bucket: str, key: str, sha256: str | None = None) -> bytes:
    """Return an object's whole body (for objects bounded in size by design).

    With ``sha256``, refuse a body that does not have it (:class:`ObjectChangedError`).
    """
    body: bytes = open_stream(bucket, key, sha256).read()
    return body


def last_modified(bucket: str, key: str) -> datetime:
    """Return when S3 stored an object: its ``LastModified``, on S3's clock, in whole seconds.

    S3 sets it, not the object's writer: when an object was written, in a form its
    body cannot forge.
    """
    moment: datetime = s3_client().head_object(Bucket=bucket, Key=key)["LastModified"]
    return moment


def read_json(bucket: str, key: str) -> Any:
    """Return a JSON object's parsed content, checked, refusing one beyond :data:`MAX_JSON_BYTES`.

    At most one byte more than the bound is read, so an object planted to exhaust
    the function's memory costs a bounded read and an input error naming it. The
    body must match the checksum S3 recorded for the object (asked for with the
    read; objects written before checksums were sent have none) and the document
    its seal (:func:`parse_json`): otherwise a :class:`DamagedObjectError`.
    """
    where = f"s3://{bucket}/{key}"
    stream = s3_client().get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")["Body"]
    body: bytes = stream.read(MAX_JSON_BYTES + 1)
    if len(body) > MAX_JSON_BYTES:
        raise ObjectTooLargeError(f"{where} is larger than {MAX_JSON_BYTES:,} bytes, "
                                  "beyond any JSON object the pipeline writes; not read")
    try:
        stream.read()  # the end: where the SDK compares the body with S3's checksum of it
    except FlexibleChecksumError as error:
        raise DamagedObjectError(
            f"{where}: the body read is not the one S3 recorded a checksum for ({error}); "
            "nothing was read from it (docs/runbook.md, \"A manifest or marker is "
            "damaged\")") from None
    return parse_json(body, where)


class _Checked:
    """A body hashed as it is read; its end raises :class:`ObjectChangedError` on a mismatch."""

    def __init__(self, body: IO[bytes] | StreamingBody, bucket: str, key: str, sha256: str,
                 where: str | None = None) -> None:
        self._body, self._bucket, self._key, self._sha256 = body, bucket, key, sha256
        self._where = where
        self._hash = hashlib.sha256()

    def read(self, amt: int | None = None) -> bytes:
        """Read (and hash) up to ``amt`` bytes; at the end, compare the whole object's hash."""
        data: bytes = self._body.read() if amt is None else self._body.read(amt)
        self._hash.update(data)
        if amt is None or not data:
            found = base64.b64encode(self._hash.digest()).decode()
            if found != self._sha256:
                raise ObjectChangedError(self._bucket, self._key, self._sha256, found,
                                         where=self._where)
        return data

    def close(self) -> None:
        """Close the body underneath."""
        self._body.close()


def checked_file(root: Path, key: str, sha256: str | None = None) -> IO[bytes]:
    """Open the file of object ``key`` in ``root``, a local copy of a bucket, as S3 reads are.

    With ``sha256`` (the manifest's record), reading to the end raises
    :class:`ObjectChangedError` naming the file if it is not that object, exactly
    as :func:`open_stream` does for the bucket.
    """
    path = root / key
    raw = path.open("rb")
    if sha256 is None:
        return raw
    return cast(IO[bytes], _Checked(raw, str(root), key, sha256, where=str(path)))


def open_stream(bucket: str, key: str, sha256: str | None = None) -> StreamingBody:
    """Return a streaming body to read a large object without holding it in memory.

    With ``sha256`` (the manifest's record of the object), the bytes are hashed as
    they stream and reading to the end raises :class:`ObjectChangedError` if the
    object is not that one: a reader consumes every byte before it commits.
    """
    response = s3_client().get_object(Bucket=bucket, Key=key)
    if sha256 is None:
        return response["Body"]
    checked = cast(IO[bytes], _Checked(response["Body"], bucket, key, sha256))  # read, close
    return StreamingBody(checked, response["ContentLength"])


def list_keys(bucket: str, prefix: str, start_after: str | None = None,
              accept: KeyTest | None = None) -> Iterator[str]:
    """Yield keys under ``prefix`` in lexical order, optionally after ``start_after``.

    With ``accept``, only the keys it accepts; the others are reported as strays.
    """
    kwargs: "ListObjectsV2RequestPaginateTypeDef" = {"Bucket": bucket, "Prefix": prefix}
    if start_after:
        kwargs["StartAfter"] = start_after
    for page in s3_client().get_paginator("list_objects_v2").paginate(**kwargs):
        for item in page.get("Contents", ()):
            if accept is None or accept(item["Key"]):
                yield item["Key"]
            else:
                stray_object(bucket, item["Key"])


def _children(bucket: str, prefix: str) -> list[str]:
    """The keys and sub-folders directly under ``prefix``, newest (greatest) first."""
    children: list[str] = []
    for page in s3_client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, Delimiter="/"):
        children += [common["Prefix"] for common in page.get("CommonPrefixes", ())]
        children += [item["Key"] for item in page.get("Contents", ())]
    return sorted(children, reverse=True)


def newest_key(bucket: str, prefix: str, below: str | None = None,
               accept: KeyTest | None = None) -> str | None:
    """Return the greatest key under ``prefix`` (strictly less than ``below`` when given).

    With ``accept``, the greatest key it accepts: the others are reported as strays
    and passed over, so a stray never hides the keys below it.

    It descends the date folders (year, month, day: four small listings), so its
    cost does not grow with the number of keys, which matters for a pipeline that
    writes a manifest every five minutes for years. A folder is entered only when
    some key in it may be below the bound, and left for the next one down when
    none is.
    """
    for child in _children(bucket, prefix):
        folder = child.endswith("/")
        if below is not None and child >= below and not (folder and below.startswith(child)):
            continue  # the key, or everything in the folder, is at or above the bound
        if not folder:
            if accept is None or accept(child):
                return child
            stray_object(bucket, child)
            continue
        found = newest_key(bucket, child, below, accept)
        if found is not None:
            return found
    return None


def latest_manifest_key(bucket: str) -> str | None:
    """Return the newest manifest key of ``bucket`` (see :func:`newest_key`)."""
    return newest_key(bucket, MANIFEST_PREFIX, accept=is_manifest_key)


def is_newest_key(bucket: str, prefix: str, key: str | None, accept: KeyTest) -> bool:
    """Tell whether ``key`` is the greatest key ``accept`` takes under ``prefix`` (None: none is).

    One listing (one request while fewer than a thousand keys follow) from just
    before ``key``: the first key accepted must be ``key`` itself, which proves it
    exists, and no other may follow. :func:`newest_key` descends four levels of
    folders to the same answer; a run that knows which key it expects needs only this.
    """
    listed = list_keys(bucket, prefix, start_after=None if key is None else key[:-1],
                       accept=accept)
    if key is not None and next(listed, None) != key:
        return False
    return next(listed, None) is None


def is_newest_manifest(bucket: str, key: str | None) -> bool:
    """Tell whether ``key`` is the newest manifest of ``bucket`` (see :func:`is_newest_key`)."""
    return is_newest_key(bucket, MANIFEST_PREFIX, key, is_manifest_key)


def manifest_keys_after(bucket: str, after: str | None) -> Iterator[str]:
    """Yield manifest keys strictly newer than ``after`` (all of them when None), oldest first.

    Only keys of the manifest layout: a stray object under the prefix is reported, not read.
    """
    return list_keys(bucket, MANIFEST_PREFIX, start_after=after, accept=is_manifest_key)
