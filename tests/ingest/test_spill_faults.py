"""The InfluxDB disk spill under the faults a review found: a crash mid-append, a short write on a
nearly full disk, a full disk while the database comes back, two workers on one directory, a
progress file left by a crash, and a server (or proxy) that refuses a body as too large.

Real files in a temporary directory throughout. A full or nearly full disk is synthetic
(`_Disk`): no filesystem is mounted in tests, so the calls where the spill meets the kernel fail
the way a full disk makes them fail. The database is the scripted HTTP stub, or a small server
that answers 413 above a body size (like InfluxDB's max-body-size or a proxy's limit).
"""

from __future__ import annotations

import errno
import io
import os
import re
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ingest.influx import InfluxSink, SinkError
from ingest.service import IngestService
from ingest.spill import _HEAD, _MAGIC, Spill, SpillBusy
from nabz.config import Config, InfluxConfig, IngestConfig
from tests.ingest.httpstub import Stub

ROOT = Path(__file__).resolve().parents[2]


def _lines(tag: str, n: int) -> list[str]:
    """Synthetic ECG points; `tag` (no spaces) tells batches apart."""
    return [
        f"ecg,batch={tag},device=ecg-0001 signal_uv={i}i {1_795_597_200_000_000_000 + i}" for i in range(n)
    ]


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spill"))


def _torn_record(lines: list[str]) -> bytes:
    """The first half of a record, as a crash mid-append leaves it."""
    payload = "\n".join(lines).encode()
    record = _HEAD.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload
    return record[: len(record) // 2]


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return cond()


class _Disk:
    """A disk under `root` with `free` bytes left (None: plenty). Synthetic, at the boundary where
    Python meets the kernel: `os.write` and `os.pwrite` on files there take what fits and then fail
    with ENOSPC (a short write first, as the kernel does); a file opened for writing through `io`
    fails at open when no byte is free. Rewriting bytes in place, truncating and deleting need no
    new block and always work."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        self.root = str(root.resolve())
        self.free: int | None = None
        real_write, real_pwrite, real_io_open = os.write, os.pwrite, io.open

        def here(fd: int) -> bool:
            try:
                return os.readlink(f"/proc/self/fd/{fd}").startswith(self.root + "/")
            except OSError:
                return False

        def take(fd: int, data: Any, grow: int, do: Callable[[Any], int]) -> int:
            if self.free is None or grow <= 0 or not here(fd):
                return do(data)
            if self.free == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            n = do(bytes(data)[: len(data) - grow + min(grow, self.free)])
            self.free -= min(grow, self.free)
            return n

        def write(fd: int, data: Any) -> int:
            return take(fd, data, len(data), lambda d: real_write(fd, d))

        def pwrite(fd: int, data: Any, offset: int) -> int:
            grow = offset + len(data) - os.fstat(fd).st_size
            return take(fd, data, grow, lambda d: real_pwrite(fd, d, offset))

        def io_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            writes = any(c in mode for c in "wax+") and not isinstance(file, int)
            if self.free == 0 and writes and str(Path(file).resolve()).startswith(self.root + "/"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
            return real_io_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "pwrite", pwrite)
        monkeypatch.setattr(io, "open", io_open)


class _SizeLimited:
    """An InfluxDB write endpoint that answers 413 to a body over `limit` bytes and 204 otherwise,
    keeping the lines it took and the sizes of every body it was sent."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.took: list[str] = []
        self.bodies: list[int] = []
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                srv.bodies.append(len(body))
                if len(body) > srv.limit:
                    data = b'{"code":"request too large","message":"body too large"}'
                    self.send_response(413)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                srv.took.extend(body.decode().split("\n"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    yield s
    s.close()


def _sink(url: str, spill_dir: Path, **kw: Any) -> InfluxSink:
    kw = {"retries": 0, "backoff_s": 0.01, "replay_every_s": 0.05} | kw
    return InfluxSink(InfluxConfig(url=url, token="t", batch_size=5000), spill_dir=spill_dir, **kw)


def _sent(stub: Stub) -> list[str]:
    return [line for r in stub.requests if r.path == "/api/v2/write" for line in r.body.decode().split("\n")]


# --- 3: a torn record strands nothing behind it -------------------------------------------------
def test_records_spilled_after_a_crash_mid_append_are_all_replayed_and_the_spill_empties(
    tmp_path: Path,
) -> None:
    spill = Spill(tmp_path)
    spill.append(["a 1", "a 2"])  # acknowledged before the crash
    with _segments(tmp_path)[-1].open("ab") as f:  # killed while appending the next record
        f.write(_torn_record(_lines("torn", 500)))
    spill.close()

    again = Spill(tmp_path)  # ingest starts again, the database still down
    assert again.pending_lines == 2
    again.append(["b 1", "b 2", "b 3"])  # fsynced: the caller acknowledges these
    again.close()

    restarted = Spill(tmp_path)
    assert restarted.pending_lines == 5
    got: list[str] = []
    assert restarted.replay(got.extend) == 5
    assert got == ["a 1", "a 2", "b 1", "b 2", "b 3"]
    assert not restarted and restarted.pending_lines == 0 and _segments(tmp_path) == []
    restarted.close()


def test_a_segment_with_torn_bytes_between_records_still_gives_every_whole_record(tmp_path: Path) -> None:
    # A segment as earlier versions could leave it: records appended behind a torn one.
    spill = Spill(tmp_path)
    spill.append(["a 1"])
    seg = _segments(tmp_path)[-1]
    with seg.open("ab") as f:
        f.write(_torn_record(_lines("torn", 300)))
    spill.append(["b 1", "b 2"])  # same segment, behind the torn bytes
    spill.close()

    again = Spill(tmp_path)
    assert again.pending_lines == 3
    got: list[str] = []
    again.replay(got.extend)
    assert got == ["a 1", "b 1", "b 2"] and not again and _segments(tmp_path) == []
    again.close()


# --- 4: a short write is an error, and leaves nothing behind ------------------------------------
def test_a_batch_only_partly_written_on_a_nearly_full_disk_raises_and_is_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = _Disk(monkeypatch, tmp_path)
    spill = Spill(tmp_path)
    spill.append(["first 1"])
    seg = _segments(tmp_path)[-1]
    size = seg.stat().st_size

    disk.free = 100  # a part of the next record fits, not all of it
    with pytest.raises(OSError) as exc:
        spill.append([f"second {i}" for i in range(100)])  # the caller must not acknowledge
    assert exc.value.errno == errno.ENOSPC
    assert seg.stat().st_size == size and spill.pending_lines == 1

    disk.free = None  # space is back
    spill.append(["third 1"])
    spill.close()
    again = Spill(tmp_path)  # and after a restart, the same
    assert again.pending_lines == 2
    got: list[str] = []
    again.replay(got.extend)
    assert got == ["first 1", "third 1"]
    again.close()


def test_a_batch_that_does_not_fit_in_a_new_segment_leaves_no_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = _Disk(monkeypatch, tmp_path)
    spill = Spill(tmp_path)
    disk.free = 0
    with pytest.raises(OSError):
        spill.append(["a 1"])
    assert not spill and _segments(tmp_path) == []
    spill.close()


# --- 5: a full disk does not stop the replay for good -------------------------------------------
def test_on_a_full_disk_the_spill_drains_when_the_database_is_back_and_writes_succeed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stub: Stub
) -> None:
    disk = _Disk(monkeypatch, tmp_path)
    stub.routes[("POST", "/api/v2/write")] = [(503, {"message": "down"})]
    sink = _sink(stub.url, tmp_path / "spill")
    try:
        spilled = [line for k in range(5) for line in _lines(f"outage{k}", 200)]
        for k in range(5):
            sink.write(spilled[k * 200 : (k + 1) * 200])
        disk.free = 0  # the disk fills up
        with pytest.raises(SinkError):
            sink.write(_lines("diskfull", 10))  # ingest cannot acknowledge: the broker keeps it
        stub.routes[("POST", "/api/v2/write")] = [(204, None)]  # the database is back, disk still full
        assert _wait(lambda: not sink.spill), f"{sink.spill.pending_lines} lines still wait in the spill"
        assert set(spilled) <= set(_sent(stub)) and _segments(tmp_path / "spill") == []
        sink.write(_lines("after", 10))  # no SinkError: ingest runs again
        assert _lines("after", 10)[-1] in _sent(stub)
    finally:
        sink.close()


def test_a_replay_that_fails_on_the_disk_is_tried_again_until_it_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stub: Stub
) -> None:
    disk = _Disk(monkeypatch, tmp_path)
    stub.routes[("POST", "/api/v2/write")] = [(503, {"message": "down"})]
    sink = _sink(stub.url, tmp_path / "spill")
    try:
        sink.write(["ecg,device=x signal_uv=oops 1"])  # spilled while the database is down
        disk.free = 0
        # The database is back and refuses the line as malformed, but rejected.lp cannot be written
        stub.routes[("POST", "/api/v2/write")] = [(400, {"code": "invalid", "message": "bad line"})]
        tried = len(stub.requests)
        assert _wait(lambda: len(stub.requests) >= tried + 3)  # the replayer tried, and again
        assert sink.spill.pending_lines == 1 and not (tmp_path / "spill" / "rejected.lp").exists()
        disk.free = None
        assert _wait(lambda: not sink.spill)
        assert "bad line" in (tmp_path / "spill" / "rejected.lp").read_text() and sink.rejected_lines == 1
    finally:
        sink.close()


def test_a_write_that_finds_lines_in_the_spill_and_no_replayer_starts_one(tmp_path: Path, stub: Stub) -> None:
    # The replayer of older versions ended when the spill was empty: a caller spilling at that
    # moment left lines with no one to replay them, and every later batch went behind them.
    stub.routes[("POST", "/api/v2/write")] = [(204, None)]
    sink = _sink(stub.url, tmp_path / "spill")
    try:
        assert sink._replayer is None or not sink._replayer.is_alive()
        sink.spill.append(_lines("beforewrite", 5))
        sink.write(_lines("next", 5))  # goes behind them, into the spill
        assert _wait(lambda: not sink.spill)
        assert set(_lines("beforewrite", 5) + _lines("next", 5)) <= set(_sent(stub))
    finally:
        sink.close()


# --- 6: one process per spill directory, one directory per worker ------------------------------
def test_a_second_process_on_the_same_spill_directory_is_refused_naming_it(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from ingest.spill import Spill; s = Spill(sys.argv[1]); print('open', flush=True); sys.stdin.read()", str(tmp_path)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(SpillBusy, match=re.escape(str(tmp_path))):
            Spill(tmp_path)
        with pytest.raises(SinkError, match=re.escape(str(tmp_path))):
            _sink("http://127.0.0.1:9", tmp_path)
    finally:
        holder.communicate("", timeout=10)
    Spill(tmp_path).close()  # the other process is gone: the directory is free


def test_workers_given_one_spill_dir_each_spill_into_their_own_and_replay_only_their_own(
    tmp_path: Path, stub: Stub
) -> None:
    stub.routes[("POST", "/api/v2/write")] = [(503, {"message": "down"})]

    def worker(n: int) -> IngestService:
        return IngestService(
            Config(
                ingest=IngestConfig(store_path=str(tmp_path / f"w{n}.sqlite"), workers=2, worker=n),
                influx=InfluxConfig(url=stub.url, token="t", spill_dir=str(tmp_path / "spill")),
            ),
            client_id="ingest",
        )

    a, b = worker(0), worker(1)
    try:
        assert a.sink is not None and b.sink is not None
        a.sink.retries = b.sink.retries = 0
        a.sink.replay_every_s = b.sink.replay_every_s = 3600  # this test replays by hand
        assert a.sink.spill.dir != b.sink.spill.dir
        assert {a.sink.spill.dir.name, b.sink.spill.dir.name} == {"ingest-0", "ingest-1"}
        a.sink.write(_lines("a", 3))
        b.sink.write(_lines("b", 4))
        a.sink.spill.replay(lambda lines: None)  # A drains while B keeps its own
        assert not a.sink.spill and b.sink.spill.pending_lines == 4
        got: list[str] = []
        b.sink.spill.replay(got.extend)
        assert got == _lines("b", 4)
    finally:
        a.stop()
        b.stop()


# --- 9: a progress file left by a crash skips nothing --------------------------------------------
def test_a_progress_file_left_by_a_crash_does_not_skip_records_spilled_later(tmp_path: Path) -> None:
    spill = Spill(tmp_path)
    for i in range(3):
        spill.append([f"old {i}"])
    first = _segments(tmp_path)[0].stem
    spill.replay(lambda lines: None)
    spill.close()
    # a crash between deleting a segment and deleting its progress file (older versions), with
    # the names older versions gave: first segment 1, and a count that would skip three records
    for stem in (first, "000000000001"):
        (tmp_path / f"{stem}.done").write_text("3")

    again = Spill(tmp_path)
    for i in range(4):
        again.append([f"new {i}"])  # the next outage: each fsynced and acknowledged
    assert again.pending_lines == 4 and list(tmp_path.glob("*.done")) == []
    assert all(int(p.stem) > int(first) for p in _segments(tmp_path))  # a name is never reused
    got: list[str] = []
    again.replay(got.extend)
    assert got == [f"new {i}" for i in range(4)]
    again.close()


# --- 11: too large is split, not set aside; a configuration fault keeps the data ---------------
def test_a_batch_refused_as_too_large_is_sent_in_halves_and_nothing_is_set_aside(tmp_path: Path) -> None:
    lines = _lines("big", 1000)
    server = _SizeLimited(limit=len("\n".join(lines[:300]).encode()))
    giant = 'ecg,device=ecg-0001 note="' + "x" * 40_000 + '" 1'
    sink = _sink(server.url, tmp_path / "spill")
    try:
        sink.write(lines)
        assert sorted(server.took) == sorted(lines)  # every line, each once
        assert not (tmp_path / "spill" / "rejected.lp").exists() and sink.rejected_lines == 0
        assert max(server.bodies) > server.limit  # it was refused at first
        sink.write([giant])  # one line over the limit by itself cannot ever go in
        assert sink.rejected_lines == 1 and "413" in (tmp_path / "spill" / "rejected.lp").read_text()
        assert not sink.spill
    finally:
        sink.close()
        server.close()


def test_too_large_during_replay_is_split_as_well(tmp_path: Path, stub: Stub) -> None:
    lines = _lines("replayed", 400)
    server = _SizeLimited(limit=len("\n".join(lines[:150]).encode()))
    stub.routes[("POST", "/api/v2/write")] = [(503, {"message": "down"})]
    sink = _sink(stub.url, tmp_path / "spill", replay_every_s=3600)
    try:
        sink.write(lines)
        assert sink.spill.pending_lines == 400
    finally:
        sink.close()
    again = _sink(server.url, tmp_path / "spill", replay_every_s=3600)
    try:
        assert again.replay_once() == 400
        assert sorted(server.took) == sorted(lines) and not again.spill and again.rejected_lines == 0
    finally:
        again.close()
        server.close()


@pytest.mark.parametrize("status", [401, 403, 404, 405])
def test_a_configuration_fault_keeps_the_data_in_the_spill_until_it_is_fixed(
    tmp_path: Path, stub: Stub, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    stub.routes[("POST", "/api/v2/write")] = [(status, {"code": "unauthorized", "message": "no"})]
    sink = _sink(stub.url, tmp_path / "spill", retries=1, replay_every_s=0.5)
    try:
        sink.write(_lines("good", 20))
        assert len(stub.requests) == 2  # retried first
        assert any(r.levelname == "ERROR" and str(status) in r.getMessage() for r in caplog.records)
        assert sink.spill.pending_lines == 20 and sink.rejected_lines == 0
        assert not (tmp_path / "spill" / "rejected.lp").exists()
        stub.routes[("POST", "/api/v2/write")] = [(204, None)]  # the token is fixed
        assert _wait(lambda: not sink.spill)
        assert set(_lines("good", 20)) <= set(_sent(stub))
    finally:
        sink.close()


# --- closing: a replay in progress stops, and the directory is released only once it has -------
def test_closing_during_a_long_replay_stops_it_and_the_next_process_gets_the_rest(tmp_path: Path) -> None:
    """Ingest stopped while a large spill drains into a slow database: it stops within a write,
    not after the whole spill (or with its replayer still writing after the lock was given up)."""
    took: list[str] = []

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(0.05)
            took.extend(body.decode().split("\n"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        sink = _sink(url, tmp_path / "spill")
        for i in range(60):
            sink.spill.append([f"m v={i} {i}"])
        sink._start_replayer()
        assert _wait(lambda: len(took) >= 5)
        t0 = time.monotonic()
        sink.close()
        assert time.monotonic() - t0 < 2.0 and sink._replayer is not None and not sink._replayer.is_alive()
        n = len(took)
        time.sleep(0.3)
        assert len(took) == n < 60  # nothing written after the close
        again = _sink(url, tmp_path / "spill")  # the next process: the lock is free, the rest is there
        try:
            assert _wait(lambda: not again.spill, timeout=30)
            assert {f"m v={i} {i}" for i in range(60)} <= set(took)
        finally:
            again.close()
    finally:
        server.shutdown()
        server.server_close()
