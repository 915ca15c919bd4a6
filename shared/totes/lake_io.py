"""The lake's FileIO: every object written once, as one ``PutObject`` with ``If-None-Match: *``.

pyiceberg's default S3 FileIO writes through pyarrow's S3 file system, which
uploads every object (a 1 KB metadata file too) as a multipart upload without
``If-None-Match``, so a bucket policy could not require conditional writes. This
FileIO writes through :mod:`totes.storage`, the pipeline's one S3 writer: the
object is spooled (memory, then a temporary file) and created with a conditional,
checksummed ``PutObject`` when the stream closes. Iceberg names every file
uniquely, so "already exists" is never expected, and is an error when it happens.
It never deletes (the bucket refuses it too).

It reads through the same botocore client, one ``GetObject`` per file spooled the
same way (pyiceberg opens every file it reads, metadata and data, through
:meth:`CreateOnceFileIO.new_input`): every S3 call of the publish function is then
one botocore call, with the SDK's endpoint, credentials and retries like every other
stage's, and visible to the least-privilege test's recording.

Selected by the catalog's ``py-io-impl`` property (:func:`totes.lake.glue_catalog`).
"""
import tempfile
from typing import IO, Any, Callable, cast

from botocore.exceptions import ClientError
from pyiceberg.io import FileIO, InputFile, InputStream, OutputFile

from totes import storage

#: bytes a write (or a read) keeps in memory before it spools to a temporary file.
SPOOL_BYTES = 8 << 20
#: bytes read from S3 at a time while a file is spooled.
READ_CHUNK_BYTES = 1 << 20
#: S3's answers to a HEAD of a key that does not exist.
NOT_FOUND = ("404", "NoSuchKey", "NotFound")


class _CreateOnceStream:
    """A writable stream that creates its object, once, when it is closed."""

    def __init__(self, location: str, written: Callable[[int], None]):
        """Spool what is written; ``written`` is told the object's size once it exists."""
        self.location = location
        self._written = written
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        self.closed = False

    def write(self, data: Any) -> int:
        """Append ``data`` to what the object will hold."""
        return self._spool.write(data)

    def tell(self) -> int:
        """Bytes written so far."""
        return self._spool.tell()

    def flush(self) -> None:
        """Nothing to flush before the object is created."""

    def writable(self) -> bool:
        """Always: the stream is for writing."""
        return True

    def close(self) -> None:
        """Create the object with everything written (``If-None-Match: *``), once."""
        if self.closed:
            return
        self.closed = True
        bucket, key = storage.bucket_and_key(self.location)
        try:
            size = self._spool.tell()
            self._spool.seek(0)
            storage.put_new_object(bucket, key, self._spool, "application/octet-stream")
            self._written(size)
        finally:
            self._spool.close()

    def __enter__(self) -> "_CreateOnceStream":
        """Use as a context manager, like any stream."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Create the object, unless the block failed: then nothing is written."""
        if exc_info[0] is not None:
            self.closed = True
            self._spool.close()
            return
        self.close()


class SpooledInputFile(InputFile):
    """An Iceberg input file read with one ``GetObject`` through :mod:`totes.storage`."""

    def __len__(self) -> int:
        """The object's size (a ``HeadObject``)."""
        bucket, key = storage.bucket_and_key(self.location)
        size: int = storage.s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"]
        return size

    def exists(self) -> bool:
        """Whether the object exists."""
        try:
            len(self)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in NOT_FOUND:
                return False
            raise
        return True

    def open(self, seekable: bool = True) -> InputStream:
        """The whole object, spooled (memory, then a temporary file), positioned at its start."""
        bucket, key = storage.bucket_and_key(self.location)
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        body = storage.open_stream(bucket, key)
        try:
            for chunk in body.iter_chunks(READ_CHUNK_BYTES):
                spool.write(chunk)
        except BaseException:
            spool.close()
            raise
        finally:
            body.close()
        spool.seek(0)
        return cast(InputStream, spool)


class CreateOnceOutputFile(OutputFile):
    """An Iceberg output file created by one conditional ``PutObject``."""

    def __init__(self, location: str):
        """Remember where it goes."""
        super().__init__(location)
        self._length: int | None = None

    def __len__(self) -> int:
        """The object's size: what was written, or what S3 has."""
        if self._length is not None:
            return self._length
        return len(self.to_input_file())

    def exists(self) -> bool:
        """Whether the object exists already."""
        return self.to_input_file().exists()

    def to_input_file(self) -> InputFile:
        """The same object, to read."""
        return SpooledInputFile(self.location)

    def create(self, overwrite: bool = False) -> Any:
        """A stream that creates the object when closed (never over an existing one)."""
        return _CreateOnceStream(self.location, self._created)

    def _created(self, size: int) -> None:
        self._length = size


class CreateOnceFileIO(FileIO):
    """pyiceberg FileIO: the pipeline's S3 client, create-once writes, no deletes.

    It reads no property: S3 is reached as every stage reaches it (:mod:`totes.storage`).
    """

    def new_input(self, location: str) -> InputFile:
        """Read ``location`` with one ``GetObject``."""
        return SpooledInputFile(location)

    def new_output(self, location: str) -> OutputFile:
        """Write ``location`` once, conditionally."""
        return CreateOnceOutputFile(location)

    def delete(self, location: str | InputFile | OutputFile) -> None:
        """Refuse: the lake never deletes (its bucket policy refuses it too)."""
        raise PermissionError(f"the lake never deletes ({location})")
