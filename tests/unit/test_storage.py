"""The one S3 writer: create-only, and acceptable to buckets that enforce it in AWS.

The deployed buckets refuse a PutObject without ``If-None-Match`` and, with Object
Lock's default retention, one without a checksum (template.yaml). Every write goes
through :func:`storage.put_new_object`, so these tests pin what it sends.
"""
import ast
import io
import json
import re
import threading
import time
from pathlib import Path

import boto3
import botocore
import pytest
from botocore.config import Config
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, ConnectTimeoutError
from moto import mock_aws

from totes import errors, observability, storage
from totes.config import ConfigurationError
from totes_local.runner import LambdaContext

BUCKET = "storage-test"
LOCKED_BUCKET = "storage-test-locked"
ROOT = Path(__file__).resolve().parents[2]
#: client calls that create or replace objects; only the storage module may make them.
S3_WRITE_CALLS = {"put_object", "upload_file", "upload_fileobj", "copy_object", "copy",
                  "create_multipart_upload", "complete_multipart_upload"}


@pytest.fixture
def bucket(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    with mock_aws():
        storage.s3_client().create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
        yield BUCKET


def test_objects_are_created_once_and_never_overwritten(bucket):
    storage.put_new_object(bucket, "a/b.jsonl", b"first", "application/x-ndjson")
    with pytest.raises(storage.ObjectAlreadyExistsError, match="a/b.jsonl"):
        storage.put_new_object(bucket, "a/b.jsonl", b"second", "application/x-ndjson")
    assert storage.read_bytes(bucket, "a/b.jsonl") == b"first"


def test_json_documents_round_trip(bucket):
    storage.put_new_json(bucket, "doc.json", {"rows": 3, "tables": ["x"]})
    assert storage.read_json(bucket, "doc.json") == {"rows": 3, "tables": ["x"]}
    assert storage.open_stream(bucket, "doc.json").read().startswith(b"{")


def test_other_s3_errors_are_not_mistaken_for_existing_objects(bucket):
    with pytest.raises(ClientError):
        storage.put_new_object("no-such-bucket-here", "k", b"x", "text/plain")


def test_listing_is_ordered_and_can_start_after_a_key(bucket):
    for key in ("p/3", "p/1", "p/2", "q/1"):
        storage.put_new_object(bucket, key, b"", "text/plain")
    assert list(storage.list_keys(bucket, "p/")) == ["p/1", "p/2", "p/3"]
    assert list(storage.list_keys(bucket, "p/", start_after="p/1")) == ["p/2", "p/3"]


def test_latest_manifest_is_found_by_descending_the_date_folders(bucket):
    assert storage.latest_manifest_key(bucket) is None
    keys = ["_manifests/2023/12/31/20231231T235959999Z-aaaaaaaa.json",
            "_manifests/2024/01/02/20240102T080000000Z-bbbbbbbb.json",
            "_manifests/2024/01/02/20240102T090000000Z-cccccccc.json",
            "_manifests/2024/01/10/20240110T070000000Z-dddddddd.json"]
    for key in keys:
        storage.put_new_json(bucket, key, {})
    storage.put_new_object(bucket, "sales_order/2099/01/01/x.jsonl", b"", "text/plain")
    assert storage.latest_manifest_key(bucket) == keys[-1]
    assert list(storage.manifest_keys_after(bucket, keys[1])) == keys[2:]
    assert list(storage.manifest_keys_after(bucket, None)) == keys


def test_whether_a_key_is_the_newest_manifest_takes_one_listing(bucket):
    keys = ["_manifests/2024/01/02/20240102T080000000Z-bbbbbbbb.json",
            "_manifests/2024/01/10/20240110T070000000Z-dddddddd.json"]
    assert storage.is_newest_manifest(bucket, None)
    storage.put_new_json(bucket, keys[0], {})
    # strays on either side never count: not even one sorting between the key and its prefix
    for stray in ("_manifests/2024/01/02/20240102T080000000Z-bbbbbbbb.jsoa",
                  "_manifests/notes.json"):
        storage.put_new_json(bucket, stray, {})
    assert not storage.is_newest_manifest(bucket, None)
    assert storage.is_newest_manifest(bucket, keys[0])
    assert not storage.is_newest_manifest(bucket, keys[1])  # not there
    storage.put_new_json(bucket, keys[1], {})
    assert not storage.is_newest_manifest(bucket, keys[0])
    assert storage.is_newest_manifest(bucket, keys[1])


def test_background_puts_keep_at_most_their_bound_in_flight_and_all_exist_once_closed(
        bucket, monkeypatch):
    put, in_flight, most = storage.put_new_object, [], []

    def counted(*args):
        in_flight.append(args[1])
        most.append(len(in_flight))
        try:
            put(*args)
        finally:
            in_flight.remove(args[1])

    monkeypatch.setattr(storage, "put_new_object", counted)
    puts = storage.BackgroundPuts(2)
    for part in range(6):
        puts.put(bucket, f"t/{part}.parquet", b"x" * part, "application/octet-stream")
    puts.close()
    assert max(most) <= 2
    assert list(storage.list_keys(bucket, "t/")) == [f"t/{part}.parquet" for part in range(6)]


def test_a_failed_background_put_is_raised_at_close_after_every_other_write_ended(bucket):
    storage.put_new_object(bucket, "t/1.parquet", b"taken", "application/octet-stream")
    puts = storage.BackgroundPuts(4)
    for part in range(4):
        puts.put(bucket, f"t/{part}.parquet", b"new", "application/octet-stream")
    with pytest.raises(storage.ObjectAlreadyExistsError, match="t/1.parquet"):
        puts.close()
    assert [storage.read_bytes(bucket, f"t/{part}.parquet") for part in range(4)] == [
        b"new", b"taken", b"new", b"new"]
    puts.close()  # nothing left: closing again is quiet


def test_writers_sharing_background_puts_leave_the_last_wait_to_its_owner(bucket, monkeypatch):
    from totes.capture_mode import ObjectWriter

    released = threading.Event()
    put = storage.put_new_object

    def held(*args):
        released.wait(5)
        put(*args)

    monkeypatch.setattr(storage, "put_new_object", held)
    puts = storage.BackgroundPuts(1)
    first = ObjectWriter(bucket, 10, lambda part: f"a/{part}.jsonl", puts=puts)
    first.write_chunk(b"{}\n", 1)
    first.close()  # the next table is read while this write is in flight
    assert list(storage.list_keys(bucket, "a/")) == []
    released.set()
    second = ObjectWriter(bucket, 10, lambda part: f"b/{part}.jsonl", puts=puts)
    second.write_chunk(b"{}\n", 1)
    second.close()
    puts.close()  # the owner's close: every object of both writers exists once it returns
    assert [key for prefix in ("a/", "b/") for key in storage.list_keys(bucket, prefix)] == [
        "a/0.jsonl", "b/0.jsonl"]


def test_a_json_object_beyond_the_bound_is_refused_after_a_bounded_read(bucket, monkeypatch):
    from totes.errors import INPUT, kind_of

    monkeypatch.setattr(storage, "MAX_JSON_BYTES", 128)  # a sealed {"a": 1} is 70 bytes
    storage.put_new_json(bucket, "small.json", {"a": 1})
    storage.put_new_object(bucket, "big.json", b"[" + b"0," * 1000 + b"0]", "application/json")
    assert storage.read_json(bucket, "small.json") == {"a": 1}
    with pytest.raises(storage.ObjectTooLargeError, match="big.json is larger than 128") as caught:
        storage.read_json(bucket, "big.json")
    assert kind_of(caught.value) == INPUT


MANIFEST = {"format": "totes.ingest/2", "run_id": "20240102T080000000Z-bbbbbbbb",
            "tables": {"sales_order": {"rows": 2, "files": [{"key": "a.jsonl", "rows": 2}]}}}


def test_a_json_document_is_written_with_a_seal_over_its_fields_and_read_without_it(bucket):
    storage.put_new_json(bucket, "m.json", MANIFEST)
    raw = json.loads(storage.read_bytes(bucket, "m.json"))
    assert raw.pop(storage.SEAL_FIELD) == storage.checksum(
        json.dumps(MANIFEST, sort_keys=True, separators=(",", ":")).encode())
    assert raw == MANIFEST
    assert storage.read_json(bucket, "m.json") == MANIFEST
    with pytest.raises(ValueError, match="has a 'sha256' field already"):
        storage.put_new_json(bucket, "n.json", {**MANIFEST, "sha256": "x"})


def test_a_document_is_sealed_as_a_reader_parses_it_whatever_its_keys_and_sequences(bucket):
    storage.put_new_json(bucket, "n.json", {10: ("a", 1.5), 9: None, "x": [True]})
    assert storage.read_json(bucket, "n.json") == {"10": ["a", 1.5], "9": None, "x": [True]}


def test_a_document_with_text_no_utf_8_can_hold_is_sealed_and_read_back(bucket):
    reason = b"caf\xe9 bug".decode("utf-8", "surrogateescape")  # as sys.argv decodes Latin-1
    storage.put_new_json(bucket, "r.json", {"reason": reason, "by": "Zoë 🚀"})
    assert storage.read_json(bucket, "r.json") == {"reason": reason, "by": "Zoë 🚀"}


def test_a_document_written_before_seals_is_read_as_it_stands(bucket):
    boto3.client("s3").put_object(Bucket=bucket, Key="old.json", Body=json.dumps(MANIFEST))
    assert storage.read_json(bucket, "old.json") == MANIFEST


@pytest.mark.parametrize("damage, body, message", [
    ("truncated", lambda sealed: sealed[:len(sealed) // 2], r"is not JSON \(Unterminated"),
    ("not UTF-8", lambda sealed: b"\xff" + sealed, r"is not JSON \("),
    ("a field edited", lambda sealed: sealed.replace(b'"rows": 2', b'"rows": 3', 1),
     "is not the document the pipeline wrote: its fields have SHA-256"),
    ("a field added", lambda sealed: sealed.replace(b'{', b'{"complete": false, ', 1),
     "is not the document the pipeline wrote"),
    ("a field taken away", lambda sealed: re.sub(rb'"run_id": "[^"]*",', b"", sealed),
     "is not the document the pipeline wrote"),
    ("the seal replaced", lambda sealed: re.sub(rb'"sha256": "[^"]*"', b'"sha256": "forged"',
                                                sealed),
     "its seal \\(sha256\\) says 'forged'"),
])
def test_a_json_document_damaged_in_the_bucket_is_an_input_error_naming_it(
        bucket, damage, body, message):
    from totes.errors import INPUT, kind_of

    storage.put_new_json(bucket, "m.json", MANIFEST)
    damaged = body(storage.read_bytes(bucket, "m.json"))
    boto3.client("s3").put_object(Bucket=bucket, Key="m.json", Body=damaged)  # a test's privilege
    with pytest.raises(storage.DamagedObjectError, match=message) as caught:
        storage.read_json(bucket, "m.json")
    assert "s3://storage-test/m.json" in str(caught.value), damage
    assert kind_of(caught.value) == INPUT


def test_a_json_object_whose_body_s3_checksum_does_not_match_is_refused(bucket):
    from moto.s3.models import s3_backends

    storage.put_new_json(bucket, "m.json", MANIFEST)
    stored = s3_backends["123456789012"]["global"].buckets[bucket].keys["m.json"]
    body = stored.value
    stored.value = body.replace(b'"rows": 2', b'"rows": 3', 1)  # same length, checksum kept
    with pytest.raises(storage.DamagedObjectError,
                       match=r"s3://storage-test/m.json: the body read is not the one S3 "
                             r"recorded a checksum for \(Expected checksum"):
        storage.read_json(bucket, "m.json")


def test_stray_objects_under_the_manifest_prefix_are_reported_once_and_never_taken(
        bucket, captured_logs):
    real = ["_manifests/2024/01/02/20240102T080000000Z-bbbbbbbb.json",
            "_manifests/2024/01/10/20240110T070000000Z-dddddddd.json"]
    strays = ["_manifests/notes.json",  # greater than every real key
              "_manifests/2024/01/10/20240110T070000000Z-dddddddd.json\n",
              "_manifests/2024/01/10/2024011\u0669T070000000Z-eeeeeeee.json",
              "_manifests/2024/01/10/zz/readme.txt"]
    for key in real + strays:
        storage.put_new_json(bucket, key, {})
    observability.forget_strays()
    for _ in range(2):  # listed again in the same invocation: still one warning per key
        assert storage.latest_manifest_key(bucket) == real[-1]
        assert list(storage.manifest_keys_after(bucket, None)) == real
        assert list(storage.manifest_keys_after(bucket, real[0])) == real[1:]
    warned = [line["key"] for line in captured_logs() if line["level"] == "WARNING"]
    assert sorted(warned) == sorted(strays)
    assert observability.stray_objects() == len(strays)
    observability.forget_strays()
    assert observability.stray_objects() == 0


@pytest.fixture
def locked_bucket(monkeypatch):
    """A bucket like the deployed ones: versioned, Object Lock with a governance default."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    with mock_aws():
        client = storage.s3_client()
        client.create_bucket(
            Bucket=LOCKED_BUCKET, ObjectLockEnabledForBucket=True,
            CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
        client.put_object_lock_configuration(Bucket=LOCKED_BUCKET, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 30}}})
        yield LOCKED_BUCKET


@pytest.fixture
def sent_put_headers():
    """The HTTP headers of every PutObject the storage module's client sends."""
    seen: list[dict[str, str]] = []

    def record(request, **_):
        seen.append({name.lower(): value.decode() if isinstance(value, bytes) else value
                     for name, value in request.headers.items()})

    events = storage.s3_client().meta.events
    events.register("before-send.s3.PutObject", record)
    try:
        yield seen
    finally:
        events.unregister("before-send.s3.PutObject", record)


def test_a_bucket_with_default_retention_refuses_a_put_without_a_checksum(locked_bucket):
    # The control for the test below: without a checksum header S3 (and moto) refuse the put.
    bare = boto3.client("s3", config=Config(request_checksum_calculation="when_required"))
    with pytest.raises(ClientError, match="MissingUploadObjectWithObjectLockHeaders"):
        bare.put_object(Bucket=locked_bucket, Key="bare", Body=b"x", IfNoneMatch="*")


def test_writes_to_an_object_locked_bucket_are_accepted_and_locked(locked_bucket):
    storage.put_new_object(locked_bucket, "small.jsonl", b"{}\n", "application/x-ndjson")
    storage.put_new_object(locked_bucket, "streamed.jsonl", io.BytesIO(b"{}\n" * 10_000),
                           "application/x-ndjson")
    storage.put_new_json(locked_bucket, "_manifests/m.json", {"tables": []})
    for key in ("small.jsonl", "streamed.jsonl", "_manifests/m.json"):
        head = storage.s3_client().head_object(Bucket=locked_bucket, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE", key


def test_every_put_is_conditional_and_carries_a_sha256_checksum(bucket, sent_put_headers):
    # What the bucket policies and Object Lock require of each PutObject, header by header:
    # If-None-Match (or the put is denied) and a checksum (or a locked bucket refuses it),
    # whether the body is bytes or a streamed file (a trailing checksum).
    storage.put_new_object(bucket, "a.jsonl", b"{}\n", "application/x-ndjson")
    storage.put_new_object(bucket, "b.jsonl", io.BytesIO(b"{}\n" * 10_000),
                           "application/x-ndjson")
    storage.put_new_json(bucket, "_manifests/m.json", {})
    assert len(sent_put_headers) == 3
    for headers in sent_put_headers:
        assert headers["if-none-match"] == "*"
        assert headers["x-amz-sdk-checksum-algorithm"] == "SHA256"
        assert ("x-amz-checksum-sha256" in headers
                or headers.get("x-amz-trailer") == "x-amz-checksum-sha256"), headers


def s3_write_calls(path: Path) -> set[str]:
    """Names of S3 object-writing methods a Python file calls."""
    return {node.func.attr for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in S3_WRITE_CALLS}


def test_only_the_storage_module_writes_objects():
    # The buckets deny any write without If-None-Match: a second writer that forgot it would
    # only fail once deployed, so every write must go through put_new_object.
    writers = {path.relative_to(ROOT).as_posix()
               for folder in ("shared", "functions") for path in (ROOT / folder).rglob("*.py")
               if s3_write_calls(path)}
    assert writers == {"shared/totes/storage.py"}


def _count_gets(bucket_client, calls):
    """Record the key of every GetObject the process-wide client sends."""
    bucket_client.meta.events.register(
        "before-parameter-build.s3.GetObject",
        lambda params, **_: calls.append(params["Key"]), unique_id="count-gets")


def test_prefetch_downloads_a_bounded_few_ahead_and_hands_each_object_in_order(bucket):
    keys = [f"t/{n}.parquet" for n in range(5)]
    for n, key in enumerate(keys):
        storage.put_new_object(bucket, key, f"body {n}".encode(), "application/octet-stream")
    client, calls = storage.s3_client(), []
    _count_gets(client, calls)
    try:
        with storage.Prefetch(bucket, keys, ahead=2) as prefetch:
            first = prefetch.open(keys[0])
            assert first.read() == b"body 0"
            first.close()
            assert len(calls) <= 3  # the one read and at most two ahead, never all five
            for n, key in enumerate(keys[1:], start=1):
                with prefetch.open(key) as spool:
                    assert spool.read() == f"body {n}".encode()
    finally:
        client.meta.events.unregister("before-parameter-build.s3.GetObject",
                                      unique_id="count-gets")
    assert sorted(calls) == keys  # each downloaded once


def test_prefetch_reads_an_object_out_of_order_then_and_there_and_raises_a_read_error_at_open(
        bucket):
    storage.put_new_object(bucket, "t/a.parquet", b"a", "application/octet-stream")
    storage.put_new_object(bucket, "t/c.parquet", b"c", "application/octet-stream")
    with storage.Prefetch(bucket, ["t/a.parquet", "t/missing.parquet"], ahead=2) as prefetch:
        with prefetch.open("t/c.parquet") as spool:
            assert spool.read() == b"c"
        with pytest.raises(ClientError, match="NoSuchKey"):
            prefetch.open("t/missing.parquet")


def test_prefetch_closed_early_deletes_what_was_not_read_and_ends_its_threads(bucket):
    keys = [f"t/{n}.parquet" for n in range(3)]
    for key in keys:
        storage.put_new_object(bucket, key, b"x", "application/octet-stream")
    prefetch = storage.Prefetch(bucket, [*keys, "t/missing.parquet"], ahead=4)
    unread = list(prefetch._started.values())
    prefetch.close()  # as a failed or already-loaded manifest leaves it: nothing raised
    assert all(future.done() for future in unread)
    assert all(future.result().closed for future in unread if future.exception() is None)
    assert prefetch._pool._shutdown


# --- what a manifest recorded: the object read must be the one written -------------------------

@pytest.fixture
def versioned_bucket(bucket):
    """The test bucket versioned, as the deployed ones are: a put to a key adds a version."""
    storage.s3_client().put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket


def _replace(bucket: str, key: str, body: bytes) -> None:
    """Put a later version of ``key`` as a person with the break-glass role could (no condition)."""
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body)


def test_a_put_returns_the_sha256_it_sent_and_s3_stored(bucket, sent_put_headers):
    body = b'{"payment_id": 1}\n'
    puts = storage.BackgroundPuts(1)
    listed = puts.put(bucket, "a.jsonl", body, "application/x-ndjson")
    puts.close()
    direct = storage.put_new_object_on(None, bucket, "b.jsonl", body, "application/x-ndjson")
    assert listed == direct == storage.checksum(body)
    assert [headers["x-amz-checksum-sha256"] for headers in sent_put_headers] == [listed] * 2
    stored = storage.s3_client().head_object(Bucket=bucket, Key="a.jsonl", ChecksumMode="ENABLED")
    assert stored["ChecksumSHA256"] == listed


def test_every_reader_given_the_recorded_sha256_refuses_a_later_version_of_the_key(
        versioned_bucket):
    original = b'{"payment_id": 1, "amount": 10.00}\n'
    sha256 = storage.put_new_object_on(None, versioned_bucket, "p.jsonl", original, "text/plain")
    assert storage.read_bytes(versioned_bucket, "p.jsonl", sha256) == original
    _replace(versioned_bucket, "p.jsonl", b'{"payment_id": 1, "amount": 99.00}\n')
    found = storage.checksum(b'{"payment_id": 1, "amount": 99.00}\n')
    expected = (rf"s3://{versioned_bucket}/p.jsonl is not the object its manifest lists: "
                rf"SHA-256 expected {re.escape(sha256)}, found {re.escape(found)}")
    with pytest.raises(storage.ObjectChangedError, match=expected) as refused:
        storage.read_bytes(versioned_bucket, "p.jsonl", sha256)
    assert errors.kind_of(refused.value) == errors.INPUT
    with pytest.raises(storage.ObjectChangedError, match=expected):
        list(storage.open_stream(versioned_bucket, "p.jsonl", sha256).iter_lines())
    with pytest.raises(storage.ObjectChangedError, match=expected):
        storage.spooled(versioned_bucket, "p.jsonl", sha256)
    with storage.Prefetch(versioned_bucket, ["p.jsonl"], 1, {"p.jsonl": sha256}) as prefetch:
        with pytest.raises(storage.ObjectChangedError, match=expected):
            prefetch.open("p.jsonl")
    # Without a record (an object listed before manifests kept one) the object is read as it is.
    assert storage.read_bytes(versioned_bucket, "p.jsonl").endswith(b"99.00}\n")


def test_a_verified_stream_checks_only_at_its_end_and_streams_in_chunks(bucket):
    body = b"".join(b'{"n": %d}\n' % n for n in range(20_000))
    sha256 = storage.put_new_object_on(None, bucket, "big.jsonl", body, "text/plain")
    stream = storage.open_stream(bucket, "big.jsonl", sha256)
    assert stream.read(10) == body[:10]  # no check, and no error, before the end
    assert b"".join(stream.iter_chunks(4096)) == body[10:]


# --- whose bucket: every request names the account that must own it ----------------------------

ACCOUNT = "111122223333"


@pytest.fixture
def sent_header():
    """Record one header of every request the storage client makes, at one of its events.

    ``sent_header(event, header)`` returns the list it fills, in order, with (operation,
    the header's text or None): at ``request-created.s3`` a request as the client built
    it, at ``before-send.s3`` as it goes out, after botocore's last changes.
    """
    events = storage.s3_client().meta.events
    registered: list[tuple[str, str]] = []

    def record_at(event: str, header: str) -> list[tuple[str, str | None]]:
        seen: list[tuple[str, str | None]] = []

        def record(request, event_name, **_):
            value = request.headers.get(header)
            seen.append((event_name.rsplit(".", 1)[-1],
                         value.decode() if isinstance(value, bytes) else value))

        unique_id = f"sent-{header}"
        events.register(event, record, unique_id=unique_id)
        registered.append((event, unique_id))
        return seen

    try:
        yield record_at
    finally:
        for event, unique_id in registered:
            events.unregister(event, unique_id=unique_id)


@pytest.fixture
def sent_owners(sent_header):
    """Every request the storage client builds: (operation, x-amz-expected-bucket-owner)."""
    return sent_header("request-created.s3", "x-amz-expected-bucket-owner")


def test_every_request_names_the_account_that_must_own_the_bucket(
        bucket, sent_owners, monkeypatch):
    monkeypatch.setenv("EXPECTED_BUCKET_OWNER", ACCOUNT)
    sha256 = storage.put_new_object_on(None, bucket, "o/a.jsonl", b"{}\n", "text/plain")
    storage.read_bytes(bucket, "o/a.jsonl", sha256)
    storage.put_new_json(bucket, "o/m.json", {})
    storage.read_json(bucket, "o/m.json")
    assert list(storage.list_keys(bucket, "o/")) == ["o/a.jsonl", "o/m.json"]
    assert storage.newest_key(bucket, "o/") == "o/m.json"
    operations = {operation for operation, _ in sent_owners}
    assert operations == {"PutObject", "GetObject", "ListObjectsV2"}
    assert all(owner == ACCOUNT for _, owner in sent_owners), sent_owners


def test_a_function_expects_its_own_account_taken_from_its_arn_without_a_call(
        bucket, sent_owners):
    seen = []

    @observability.instrument("load", observability.service_logger(),
                              observability.metrics_for())
    def handler(event, context):
        seen.append(storage.expected_owner())
        return list(storage.list_keys(bucket, ""))

    context = LambdaContext("totes-load")
    context.invoked_function_arn = f"arn:aws:lambda:eu-west-2:{ACCOUNT}:function:totes-load"
    assert handler({}, context) == []
    assert seen == [ACCOUNT]
    assert sent_owners == [("ListObjectsV2", ACCOUNT)]  # and no STS call: S3's only
    assert storage.expected_owner() is None  # outside an invocation, nothing is assumed


def test_a_bucket_owned_by_another_account_fails_saying_so(bucket, monkeypatch):
    # S3 answers a request whose ExpectedBucketOwner is not the bucket's owner with 403
    # AccessDenied (moto does not check the owner): that answer, as S3 sends it.
    monkeypatch.setenv("EXPECTED_BUCKET_OWNER", ACCOUNT)

    def as_s3_answers_for_another_accounts_bucket(request, **_):
        body = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                b"<Message>Access Denied</Message></Error>")
        return AWSResponse(request.url, 403, {}, _RawBody(body))

    events = storage.s3_client().meta.events
    events.register_first("before-send.s3", as_s3_answers_for_another_accounts_bucket,
                          unique_id="foreign-bucket")
    try:
        with pytest.raises(ClientError, match=rf"Access Denied: the request required the "
                                              rf"bucket to be owned by account {ACCOUNT}.*"
                                              "owned by another account") as denied:
            storage.put_new_object(bucket, "k.jsonl", b"{}\n", "text/plain")
        assert denied.value.response["Error"]["Code"] == "AccessDenied"  # classified as before
    finally:
        events.unregister("before-send.s3", unique_id="foreign-bucket")


class _RawBody(io.BytesIO):
    """An HTTP body as botocore streams one (``stream``) for a stubbed answer."""

    def stream(self, **_):
        yield self.getvalue()


def test_the_expected_owner_must_look_like_an_account(monkeypatch):
    monkeypatch.setenv("EXPECTED_BUCKET_OWNER", "my-account")
    with pytest.raises(ConfigurationError, match="EXPECTED_BUCKET_OWNER must be a 12-digit"):
        storage.expected_owner()


def test_an_s3_that_never_answers_fails_in_seconds_naming_its_endpoint(
        monkeypatch, silent_endpoint):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", silent_endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setattr(storage, "S3_CONNECT_TIMEOUT_SECONDS", 0.5)
    storage.s3_client.cache_clear()
    started = time.monotonic()
    try:
        with pytest.raises(ConnectTimeoutError) as raised:
            storage.read_bytes(BUCKET, "some/key.json")
    finally:
        storage.s3_client.cache_clear()
    # botocore's default would wait 60 s per attempt: past ingest's and transform's timeouts.
    assert time.monotonic() - started < 30  # one default attempt alone is 60 s
    assert silent_endpoint in str(raised.value)


def test_every_request_carries_one_user_agent_naming_the_sdk_built_once(bucket, sent_header):
    sent = sent_header("before-send.s3", "User-Agent")
    # botocore would assemble it twice per request, with the features each one used.
    sha256 = storage.put_new_object_on(None, bucket, "u/a.jsonl", b"{}\n", "text/plain")
    storage.read_bytes(bucket, "u/a.jsonl", sha256)
    assert list(storage.list_keys(bucket, "u/")) == ["u/a.jsonl"]
    sent_user_agents = [agent for _, agent in sent]
    assert len(sent_user_agents) == 3
    assert len(set(sent_user_agents)) == 1, sent_user_agents
    agent = sent_user_agents[0]
    assert agent.startswith(f"Boto3/{boto3.__version__} Python/"), agent
    assert f"Botocore/{botocore.__version__}" in agent, agent


def test_an_s3_location_splits_into_bucket_and_key_and_any_other_is_refused():
    assert storage.bucket_and_key("s3://lake/fact_payment/data/x.parquet") == (
        "lake", "fact_payment/data/x.parquet")
    assert storage.bucket_and_key("s3a://lake/k") == ("lake", "k")
    with pytest.raises(ValueError, match="the lake writes to S3 only"):
        storage.bucket_and_key("file:///tmp/lake/k")
