#!/usr/bin/env node
// Run a Python script in the real MicroPython interpreter (1.27, WebAssembly build from npm) and exit
// like CPython would: 0 on success, the SystemExit code if the script exits, 1 with the traceback on
// stderr if it raises. The package's own CLI exits 0 on a Python exception, hence this runner.
//
//   node tests/tools/mpy_run.mjs [options] SCRIPT.py [--] [ARG ...]
//
//   --lib PATH         a .py/.mpy file goes to /lib/<name>; a directory's contents go into /lib
//                      (like `mpremote cp -r DIR/. :/lib`), skipping __pycache__ and dotfiles. Repeatable.
//   --file HOST:DEST   copy a host file or directory to the absolute path DEST in the interpreter's
//                      filesystem (e.g. tests/vectors/codec.json:/codec.json). Repeatable.
//   --manifest FILE    JSON: {"libs": [PATH...], "files": {"/DEST": "HOST"...}, "heap": BYTES,
//                      "args": [ARG...], "script": PATH}; relative host paths are relative to FILE.
//                      Command-line options add to it; a script on the command line wins.
//   --heap BYTES       initial GC heap (suffix k or m allowed; default 1m). This port grows its heap on
//                      demand, so it is not a memory limit: ESP32 memory budgets need their own check.
//   --mem-report       after the script, print gc.mem_alloc() to stderr ("mpy_run: mem_alloc N"): the
//                      bytes still reachable (the script's globals stay alive). Measured in a separate
//                      call once the script has returned: this port's collector cannot free anything
//                      while Python code is running (it cannot scan the WebAssembly stack), so a
//                      gc.mem_alloc() inside a script also counts every object made so far.
//
// Inside the interpreter: the script runs as __main__ from /main/<name> (its directory first on
// sys.path, then '', '.frozen', '/lib'); sys.argv is [script, ARG...] (filled in place, since the
// list cannot be rebound) and /args.json holds the ARG list. This port's asyncio has no run():
// asyncio.run(coro) records coro and the runner awaits it once the module body has finished, which
// suits the usual `asyncio.run(main())` last line. Exit codes: the script's own, or 2 when the runner
// itself cannot start (bad usage, missing file, interpreter not installed: run `make npm`).

import fs from "node:fs";
import path from "node:path";

const USAGE = "usage: node tests/tools/mpy_run.mjs [--lib PATH]... [--file HOST:DEST]... [--manifest FILE] [--heap BYTES] [--mem-report] SCRIPT.py [--] [ARG...]";

function die(message) {
  fs.writeSync(2, `mpy_run: ${message}\n`);
  process.exit(2);
}

function parseBytes(text) {
  const m = /^(\d+)([kKmM]?)$/.exec(String(text));
  if (!m) die(`bad byte count: ${text}`);
  const scale = { "": 1, k: 1024, m: 1048576 }[m[2].toLowerCase()];
  return parseInt(m[1], 10) * scale;
}

function parseArgs(argv) {
  const opts = { libs: [], files: [], heap: 1048576, args: [], script: null, memReport: false };
  let i = 0;
  const value = (flag) => {
    if (i + 1 >= argv.length) die(`${flag} needs a value\n${USAGE}`);
    return argv[++i];
  };
  for (; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--lib") opts.libs.push(path.resolve(value(a)));
    else if (a === "--file") {
      const spec = value(a);
      const at = spec.lastIndexOf(":");
      if (at <= 0 || !spec.slice(at + 1).startsWith("/")) die(`--file wants HOST:/ABSOLUTE/DEST, got ${spec}`);
      opts.files.push({ src: path.resolve(spec.slice(0, at)), dest: spec.slice(at + 1) });
    } else if (a === "--manifest") loadManifest(value(a), opts);
    else if (a === "--heap") opts.heap = parseBytes(value(a));
    else if (a === "--mem-report") opts.memReport = true;
    else if (a === "-h" || a === "--help") {
      fs.writeSync(1, USAGE + "\n");
      process.exit(0);
    } else if (a.startsWith("--") && a !== "--") die(`unknown option ${a}\n${USAGE}`);
    else break;
  }
  if (i < argv.length && argv[i] !== "--") opts.script = path.resolve(argv[i++]);
  if (i < argv.length && argv[i] === "--") i++;
  opts.args.push(...argv.slice(i));
  if (!opts.script) die(`no script given\n${USAGE}`);
  return opts;
}

function loadManifest(file, opts) {
  let m;
  try {
    m = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    die(`cannot read manifest ${file}: ${e.message}`);
  }
  const base = path.dirname(path.resolve(file));
  for (const lib of m.libs ?? []) opts.libs.push(path.resolve(base, lib));
  for (const [dest, src] of Object.entries(m.files ?? {})) {
    if (!dest.startsWith("/")) die(`manifest file destination must be absolute: ${dest}`);
    opts.files.push({ src: path.resolve(base, src), dest });
  }
  if (m.heap !== undefined) opts.heap = parseBytes(m.heap);
  if (m.args !== undefined) opts.args.push(...m.args.map(String));
  if (m.script !== undefined) opts.script = path.resolve(base, m.script);
  if (m.mem_report) opts.memReport = true;
}

// ---------------------------------------------------------------------------------------------
// The interpreter's (in-memory) filesystem
function mkdirs(FS, dir) {
  let cur = "";
  for (const part of dir.split("/").filter(Boolean)) {
    cur += "/" + part;
    if (!FS.analyzePath(cur).exists) FS.mkdir(cur);
  }
}

function copyIn(FS, src, dest) {
  let st;
  try {
    st = fs.statSync(src);
  } catch {
    die(`no such file or directory: ${src}`);
  }
  if (st.isDirectory()) {
    mkdirs(FS, dest);
    for (const name of fs.readdirSync(src).sort()) {
      if (name.startsWith(".") || name === "__pycache__") continue;
      copyIn(FS, path.join(src, name), path.posix.join(dest, name));
    }
  } else {
    mkdirs(FS, path.posix.dirname(dest));
    FS.writeFile(dest, fs.readFileSync(src));
  }
}

// Bytes from the interpreter, written through synchronously so nothing is lost at process.exit.
// A full non-blocking pipe (EAGAIN) is waited out; a reader that went away (EPIPE) drops the rest.
const pause = new Int32Array(new SharedArrayBuffer(4));
function writeAll(fd, bytes, state) {
  let off = 0;
  while (off < bytes.length && !state.closed) {
    try {
      off += fs.writeSync(fd, bytes, off);
    } catch (e) {
      if (e.code === "EAGAIN") Atomics.wait(pause, 0, 0, 2);
      else if (e.code === "EPIPE") state.closed = true;
      else throw e;
    }
  }
}

function sink(fd) {
  let pending = [];
  const state = { closed: false };
  const flush = () => {
    if (pending.length) writeAll(fd, Uint8Array.from(pending), state);
    pending = [];
  };
  const put = (chunk) => {
    for (const c of chunk) {
      pending.push(c);
      if (c === 10 || pending.length >= 4096) flush();
    }
  };
  return { put, flush };
}

const py = (s) => JSON.stringify(s); // a JSON string is a valid Python string literal

function wrapper(scriptFs, args) {
  return `
import sys
sys.path.insert(0, ${py(path.posix.dirname(scriptFs))})
del sys.argv[:]
sys.argv.extend(${py([scriptFs, ...args])})
import asyncio
_mpy_run_pending = []
if not hasattr(asyncio, "run"):
    def _mpy_run_asyncio_run(coro):
        _mpy_run_pending.append(coro)
    asyncio.run = _mpy_run_asyncio_run
_mpy_run_rc = 0
try:
    _mpy_run_globals = {"__name__": "__main__", "__file__": ${py(scriptFs)}}
    with open(${py(scriptFs)}) as _mpy_run_f:
        _mpy_run_code = compile(_mpy_run_f.read(), ${py(scriptFs)}, "exec")
    exec(_mpy_run_code, _mpy_run_globals)
    while _mpy_run_pending:
        await _mpy_run_pending.pop(0)
except SystemExit as e:
    _mpy_run_code = e.args[0] if e.args else None
    if _mpy_run_code is None:
        _mpy_run_rc = 0
    elif isinstance(_mpy_run_code, int):
        _mpy_run_rc = _mpy_run_code & 0xFF
    else:
        print(_mpy_run_code, file=sys.stderr)
        _mpy_run_rc = 1
except BaseException as e:
    import io
    _mpy_run_tb = io.StringIO()
    sys.print_exception(e, _mpy_run_tb)
    for _mpy_run_line in _mpy_run_tb.getvalue().split("\\n")[:-1]:
        if not _mpy_run_line.startswith('  File "<stdin>"'):  # this wrapper's own frame
            print(_mpy_run_line, file=sys.stderr)
    _mpy_run_rc = 1
`;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  let loadMicroPython;
  try {
    ({ loadMicroPython } = await import("@micropython/micropython-webassembly-pyscript"));
  } catch (e) {
    die(`cannot load @micropython/micropython-webassembly-pyscript (run \`make npm\`): ${e.message}`);
  }
  const out = sink(1);
  const err = sink(2);
  const mp = await loadMicroPython({ heapsize: opts.heap, stdout: out.put, stderr: err.put, linebuffer: false });
  const FS = mp.FS;
  mkdirs(FS, "/lib");
  for (const lib of opts.libs) {
    if (!fs.existsSync(lib)) die(`no such file or directory: ${lib}`);
    copyIn(FS, lib, fs.statSync(lib).isDirectory() ? "/lib" : path.posix.join("/lib", path.basename(lib)));
  }
  for (const { src, dest } of opts.files) copyIn(FS, src, dest);
  const scriptFs = path.posix.join("/main", path.basename(opts.script));
  copyIn(FS, opts.script, scriptFs);
  FS.writeFile("/args.json", JSON.stringify(opts.args));

  let rc;
  try {
    await mp.runPythonAsync(wrapper(scriptFs, opts.args));
    rc = mp.globals.get("_mpy_run_rc");
    if (opts.memReport) {
      mp.runPython('import gc, sys\ngc.collect()\nprint("mpy_run: mem_alloc", gc.mem_alloc(), file=sys.stderr)');
    }
  } catch (e) {
    // Only reached if the wrapper itself fails (or the wasm module aborts).
    out.flush();
    err.put(new TextEncoder().encode(`mpy_run: ${e.name === "PythonError" ? e.message : e.stack || e}\n`));
    rc = 1;
  }
  out.flush();
  err.flush();
  process.exit(typeof rc === "number" ? rc : 1);
}

main();
