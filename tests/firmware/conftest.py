"""Running firmware code in the real MicroPython interpreter (1.27, WebAssembly, under node).

Tests take the ``run_micropython`` fixture (or call :func:`run_micropython` through it)::

    def test_sampler(run_micropython, tmp_path):
        proc = run_micropython(
            HERE / "mp_sampler_check.py",            # runs as __main__ from /main/
            libs=[FIRMWARE / "nabz_codec.py", HERE / "fakes"],  # file -> /lib/<name>, dir -> its contents
            files={"/vectors.json": VECTORS, "/cfg.json": b'{"rate": 250}'},  # host Path or bytes
            args=["--quick"],                         # sys.argv[1:] and /args.json
        )
        assert proc.returncode == 0, proc.stderr

The return code is the script's: 0, its SystemExit code, or 1 with the MicroPython traceback on
stderr. If the interpreter is not installed the test fails (it does not skip): run ``make npm``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "tools" / "mpy_run.mjs"
WASM_PACKAGE = REPO / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
FIRMWARE = REPO / "firmware"


def run_micropython(
    script_path: str | os.PathLike[str],
    libs: Iterable[str | os.PathLike[str]] = (),
    files: Mapping[str, os.PathLike[str] | bytes] | None = None,
    heap: int | None = None,
    args: Iterable[str] = (),
    timeout: float = 60,
    mem_report: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``script_path`` in MicroPython through tests/tools/mpy_run.mjs and return the finished process.

    libs: files (copied to /lib/<name>) or directories (their contents copied into /lib).
    files: interpreter path (absolute) -> host file or directory (a Path) or the contents (bytes).
    heap: initial GC heap in bytes (the WebAssembly port grows it on demand: not a memory limit).
    args: the script's sys.argv[1:], also readable as the JSON list in /args.json.
    stdout and stderr are captured as text; nothing is raised for a non-zero exit.
    """
    if not (WASM_PACKAGE / "micropython.mjs").is_file():
        pytest.fail(
            f"MicroPython (WebAssembly) is not installed at {os.path.relpath(WASM_PACKAGE, REPO)}: "
            "run `make npm`",
            pytrace=False,
        )
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the MicroPython tests need Node.js 20", pytrace=False)
    with tempfile.TemporaryDirectory(prefix="mpy_run_") as tmp:
        manifest: dict[str, object] = {
            "script": str(Path(script_path).resolve()),
            "libs": [str(Path(lib).resolve()) for lib in libs],
            "args": [str(a) for a in args],
            "mem_report": mem_report,
        }
        if heap is not None:
            manifest["heap"] = int(heap)
        copies: dict[str, str] = {}
        for i, (dest, src) in enumerate((files or {}).items()):
            if not dest.startswith("/"):
                raise ValueError(f"files: interpreter paths are absolute, got {dest!r}")
            if isinstance(src, (bytes, bytearray)):
                content = Path(tmp, f"file{i}")
                content.write_bytes(src)
                copies[dest] = str(content)
            elif isinstance(src, os.PathLike):
                copies[dest] = str(Path(src).resolve())
            else:
                raise TypeError(f"files[{dest!r}]: give a Path (host file) or bytes (contents), not {src!r}")
        manifest["files"] = copies
        manifest_path = Path(tmp, "manifest.json")
        manifest_path.write_text(json.dumps(manifest))
        return subprocess.run(
            [node, str(RUNNER), "--manifest", str(manifest_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            check=False,
        )


@pytest.fixture(name="run_micropython")
def run_micropython_fixture() -> object:
    """The :func:`run_micropython` function, for tests under tests/firmware/."""
    return run_micropython


@pytest.fixture(name="run_micropython_module", scope="module")
def run_micropython_module_fixture() -> object:
    """The same function, for module-scoped fixtures that run one script for many tests."""
    return run_micropython
