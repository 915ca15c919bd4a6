"""The benchmarks' /tmp measurement counts what a process holds there, named or not."""
import tempfile
import time

from benchmarks.common import TempSpace


def test_an_unlinked_temporary_file_counts_while_open_and_not_after(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    space = TempSpace()
    with tempfile.TemporaryFile() as spool:  # unlinked at once: no name in the folder
        spool.write(b"x" * 100_000)
        spool.flush()
        (tmp_path / "named").write_bytes(b"y" * 1_000)
        assert space.held() == 101_000
    assert space.held() == 1_000


def test_the_sampler_keeps_the_peak_after_the_file_is_gone(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with TempSpace(interval=0.01) as space:
        with tempfile.TemporaryFile() as spool:
            spool.write(b"x" * 50_000)
            spool.flush()
            deadline = time.monotonic() + 10
            while space.peak < 50_000 and time.monotonic() < deadline:
                time.sleep(0.01)
    assert space.peak == 50_000
    assert space.held() == 0
