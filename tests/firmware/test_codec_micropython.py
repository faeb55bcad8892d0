"""The golden codec vectors hold in the real MicroPython interpreter, and the harness that says so can fail.

MicroPython 1.27 (npm @micropython/micropython-webassembly-pyscript, run by node through
tests/tools/mpy_run.mjs) imports firmware/nabz_codec.py from /lib and runs mp_codec_check.py over
tests/vectors/codec.json.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VECTORS = REPO / "tests" / "vectors" / "codec.json"
CODEC = REPO / "firmware" / "nabz_codec.py"
CHECK = HERE / "mp_codec_check.py"
SUMMARY = re.compile(r"^codec vectors: (\d+) passed, (\d+) failed$", re.MULTILINE)

RunMicroPython = Callable[..., subprocess.CompletedProcess[str]]


def vector_count(vectors: dict[str, Any]) -> int:
    return sum(len(items) for key, items in vectors.items() if not key.startswith("_"))


def summary(proc: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    found = SUMMARY.search(proc.stdout)
    assert found, f"no summary line\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return int(found.group(1)), int(found.group(2))


def test_every_codec_vector_holds_in_micropython(run_micropython: RunMicroPython) -> None:
    expected = vector_count(json.loads(VECTORS.read_text()))
    assert expected > 100
    proc = run_micropython(CHECK, libs=[CODEC], files={"/codec.json": VECTORS}, heap=256 * 1024)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "interpreter: micropython 1.27" in proc.stdout
    assert summary(proc) == (expected, 0)


def test_the_checker_agrees_under_cpython() -> None:
    """Same script, same vectors under CPython: a MicroPython-only failure is an interpreter difference."""
    proc = subprocess.run(
        [sys.executable, str(CHECK), str(VECTORS)],
        env={"PYTHONPATH": str(CODEC.parent), "PATH": ""},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "interpreter: cpython" in proc.stdout
    assert summary(proc) == (vector_count(json.loads(VECTORS.read_text())), 0)


def test_a_wrong_vector_fails_in_micropython(run_micropython: RunMicroPython) -> None:
    vectors = json.loads(VECTORS.read_text())
    vectors["battery"][0]["decoded"] = 88  # the byte is 0x57, 87 %
    vectors["invalid"].append({"name": "a valid frame listed as invalid", "codec": "battery", "hex": "57"})
    proc = run_micropython(CHECK, libs=[CODEC], files={"/codec.json": json.dumps(vectors).encode()})
    assert proc.returncode == 1
    assert summary(proc) == (vector_count(vectors) - 2, 2)
    assert "FAIL battery: contract: 87 %: decoded 87" in proc.stdout
    assert "FAIL invalid: a valid frame listed as invalid: accepted, expected ValueError" in proc.stdout


# ---------------------------------------------------------------------------------------------
# The runner: exit codes, output, files and arguments
def test_runner_fails_a_script_that_raises(run_micropython: RunMicroPython, tmp_path: Path) -> None:
    script = tmp_path / "boom.py"
    script.write_text("print('before')\ndef f():\n    raise ValueError('boom')\nf()\nprint('after')\n")
    proc = run_micropython(script)
    assert proc.returncode == 1
    assert proc.stdout == "before\n"
    assert 'File "/main/boom.py", line 3, in f' in proc.stderr
    assert proc.stderr.rstrip().endswith("ValueError: boom")


@pytest.mark.parametrize(
    ("body", "code", "stderr"),
    [
        ("import sys\nsys.exit(3)\n", 3, ""),
        ("raise SystemExit\n", 0, ""),
        ("raise SystemExit('gave up')\n", 1, "gave up\n"),
        ("import sys\nprint('fine')\n", 0, ""),
    ],
)
def test_runner_exit_codes_follow_cpython(
    run_micropython: RunMicroPython, tmp_path: Path, body: str, code: int, stderr: str
) -> None:
    script = tmp_path / "exit.py"
    script.write_text(body)
    proc = run_micropython(script)
    assert (proc.returncode, proc.stderr) == (code, stderr)


def test_runner_installs_libs_files_and_args(run_micropython: RunMicroPython, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "fake_machine.py").write_text("class Pin:\n    def __init__(self, n):\n        self.n = n\n")
    script = tmp_path / "main.py"
    script.write_text(
        "import sys, json, asyncio\n"
        "import fake_machine, nabz_codec\n"
        "print(sys.implementation.name, fake_machine.Pin(5).n, nabz_codec.battery_decode(b'\\x57'))\n"
        "print(sys.argv, json.load(open('/args.json')), open('/etc/cfg.txt').read())\n"
        "async def main():\n"
        "    await asyncio.sleep_ms(1)\n"
        "    print('async main ran')\n"
        "asyncio.run(main())\n"
    )
    proc = run_micropython(
        script, libs=[lib, CODEC], files={"/etc/cfg.txt": b"rate=250"}, args=["one", "two words"]
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "micropython 5 87",
        "['/main/main.py', 'one', 'two words'] ['one', 'two words'] rate=250",
        "async main ran",
    ]


def test_runner_without_the_interpreter_says_run_make_npm(tmp_path: Path) -> None:
    # A copy of the runner outside the repository finds no node_modules above it.
    runner = tmp_path / "mpy_run.mjs"
    shutil.copy(REPO / "tests" / "tools" / "mpy_run.mjs", runner)
    (tmp_path / "x.py").write_text("print(1)\n")
    node = shutil.which("node")
    assert node, "node is not on PATH"
    proc = subprocess.run(
        [node, str(runner), str(tmp_path / "x.py")], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 2
    assert "make npm" in proc.stderr


def test_helper_without_node_modules_fails_not_skips(
    run_micropython: RunMicroPython, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(run_micropython.__globals__, "WASM_PACKAGE", tmp_path / "missing")
    with pytest.raises(pytest.fail.Exception, match="run `make npm`"):
        run_micropython(CHECK)
