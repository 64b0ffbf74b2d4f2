"""ONNX's own backend node tests, run through rnnc's command line exactly as a user would.

Each case of ONNX's node test suite (`test_*/model.onnx` with `test_data_set_*/input_*.pb` and
`output_*.pb`) is compiled with `rnnc compile MODEL --target cpu --backends ...`, every backend that
built is run with `rnnc run DIR --backend NAME --inputs in.npz`, and each output is compared with
ONNX's expected output at the tolerance of ONNX's own backend tests (rtol 1e-3, atol 1e-7; NaN
equal to NaN; exact for integers, bools and strings; shapes and dtypes must match). Going through
the CLI, not the Python API, means that what is counted is what a user gets, exit codes included.

    python bench/onnx_node_tests.py --ops Add,Relu,LSTM --backends onnxruntime,tvm --jobs 2 --out build/node

Each command is the same argv as `python -m rnnc ...`, run by `rnnc.cli.main(argv)` in a worker
process that stays alive (one per job, replaced every 50 commands, on a timeout and on a crash), so
that torch, TVM and onnxruntime are imported once per worker, not once per command (~5 s each);
`--isolated` runs every command as a subprocess instead. Each job is pinned to its share of the
cores (rnnc's runtimes use every core a process may use): with --jobs 2 on 2 cores, one each.

Outcomes per case and backend: passed; failed (wrong values, with the max abs error); refused
(rnnc's import refused the model: its one line); skipped (the backend skipped it: its reason);
errored (a command crashed or timed out: exit code and its line); not a tensor case (sequence,
optional or map inputs or outputs, which `rnnc run`'s .npz cannot carry). Each case's records are
appended to DIR/results.jsonl as it finishes (an interrupted run keeps them; `--resume` skips those
cases). At the end it prints a table per backend and writes, from results.jsonl, DIR/results.json
(one record per case and backend) and DIR/summary.md (every failure grouped by its normalised reason).

Where the test data come from: some onnx wheels ship `onnx/backend/test/data/node/`; others (1.23
here) ship only the Python that generates the cases. Then the cases are written once, in the same
on-disk layout, to $XDG_CACHE_HOME/rnnc/onnx-node-tests/onnx-VERSION/node (about 20 s);
`--data DIR` points at any other copy (e.g. an onnx source checkout's).
"""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

RTOL = 1e-3  # what onnx.backend.test.runner uses for node cases (TestCase.rtol / atol)
ATOL = 1e-7
STANDARD_DOMAINS = ("", "ai.onnx")
DEFAULT_BACKENDS = ("onnxruntime", "tvm")
DEFAULT_TIMEOUT_S = 600.0
MAX_COMMANDS = 50  # commands an in-process worker runs before it is replaced

# Outcome categories, in the order the tables show them.
PASSED, FAILED, REFUSED, SKIPPED, ERRORED, NOT_TENSOR = (
    "passed", "failed", "refused", "skipped", "errored", "not a tensor case")
OUTCOMES = (PASSED, FAILED, REFUSED, SKIPPED, ERRORED, NOT_TENSOR)


@dataclass
class Record:
    """One case on one backend: what happened and why (the unit of results.json)."""

    case: str
    backend: str
    outcome: str
    reason: str = ""
    ops: list[str] = field(default_factory=list)
    max_abs_err: float | None = None
    bound: list[str] = field(default_factory=list)   # inputs fixed with --bind on the retry
    compile_status: str | None = None                # the manifest's status, when compile got that far
    seconds: float = 0.0                             # compile + run wall time of the case


@dataclass(frozen=True)
class Options:
    """What every case needs to know."""

    backends: tuple[str, ...]
    out: Path
    timeout_s: float = DEFAULT_TIMEOUT_S   # per rnnc command
    keep: bool = False
    rtol: float = RTOL
    atol: float = ATOL
    isolated: bool = False                 # each command a `python -m rnnc` subprocess (else in-process workers)


# --------------------------------------------------------------------------- test data


def installed_node_dir() -> Path:
    """Where an onnx wheel that ships the node test data keeps it."""
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"


def cache_node_dir() -> Path:
    """Where this script writes the generated cases when the installed onnx ships none."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnc" / "onnx-node-tests" / f"onnx-{onnx.__version__}" / "node"


def node_data_dir(data: Path | None = None) -> Path:
    """The folder of `test_*` cases: --data, else the installed copy, else the cache (generated once)."""
    if data is not None:
        if not data.is_dir():
            raise SystemExit(f"--data {data}: no such directory")
        return data
    if installed_node_dir().is_dir():
        return installed_node_dir()
    cached = cache_node_dir()
    if not cached.is_dir():
        print(f"onnx {onnx.__version__} ships no node test data; writing it to {cached} (once)",
              file=sys.stderr)
        generate_node_data(cached)
    return cached


def generate_node_data(dest: Path, modules: Sequence[str] | None = None) -> int:
    """Write ONNX's node test cases to `dest` in the layout of onnx's own data/node folder.

    The cases come from onnx's generators (`onnx.backend.test.case.node`): importing a module runs
    its `export*` functions (each seeded with 0, so the data are the same every time), and the
    serialisation mirrors `onnx.backend.test.cmd_tools generate-data`. `modules` (e.g. ["add",
    "relu"]) imports only those case modules (plus any this process imported before): a quick
    subset for tests. Written to a temporary
    folder and renamed, so that parallel runs never see half a data set. Returns the case count.
    """
    import onnx.backend.test.case.node as node_cases

    with warnings.catch_warnings(), np.errstate(all="ignore"):  # the generators divide by zero on purpose
        warnings.simplefilter("ignore")
        if modules is None:
            cases = node_cases.collect_testcases()
        else:
            for name in modules:
                importlib.import_module(f"onnx.backend.test.case.node.{name}")
            cases = list(node_cases._NodeTestCases)
    tmp = dest.parent / f".{dest.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for case in cases:
        if case.kind != "node" or case.model is None or not case.data_sets:
            continue
        case_dir = tmp / case.name
        case_dir.mkdir(parents=True)
        (case_dir / "model.onnx").write_bytes(case.model.SerializeToString())
        for i, (inputs, outputs) in enumerate(case.data_sets):
            set_dir = case_dir / f"test_data_set_{i}"
            set_dir.mkdir()
            for kind, infos, values in (("input", case.model.graph.input, inputs),
                                        ("output", case.model.graph.output, outputs)):
                for j, (info, value) in enumerate(zip(infos, values)):
                    (set_dir / f"{kind}_{j}.pb").write_bytes(_serialise(value, info).SerializeToString())
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(dest)
    except OSError:  # another process finished first: its copy is as good
        shutil.rmtree(tmp, ignore_errors=True)
    return len(cases)


def _serialise(value: Any, info: onnx.ValueInfoProto) -> Any:
    """One input or output value as the protobuf onnx's generate-data writes for its type."""
    t = info.type
    if t.HasField("map_type"):
        return numpy_helper.from_dict(value, info.name)
    if t.HasField("sequence_type"):
        return numpy_helper.from_list(value, info.name)
    if t.HasField("optional_type"):
        return numpy_helper.from_optional(value, info.name)
    if isinstance(value, onnx.TensorProto):
        return value
    return numpy_helper.from_array(value, info.name)


# --------------------------------------------------------------------------- selecting cases


def case_ops(model: onnx.ModelProto) -> list[str]:
    """The op types of the model's top-level nodes, in order of first use (domain-qualified if not standard)."""
    ops: list[str] = []
    for node in model.graph.node:
        name = node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}.{node.op_type}"
        if name not in ops:
            ops.append(name)
    return ops


def select_cases(data_dir: Path, ops: set[str] | None = None, match: str | None = None,
                 limit: int | None = None) -> list[tuple[Path, list[str]]]:
    """The case folders to run, sorted by name, each with its op types.

    With `ops`, a case is picked when every one of its nodes' op types is in `ops` (so `--ops Add`
    picks test_add*, not the expanded function tests of other ops that happen to use an Add);
    without, every case whose nodes are all standard-domain ops (ai.onnx.ml and the training ops
    are not what rnnc is for). `match` is a regular expression searched in the case name.
    """
    picked = []
    for case_dir in sorted(p for p in data_dir.glob("test_*") if (p / "model.onnx").is_file()):
        if match and not re.search(match, case_dir.name):
            continue
        model = onnx.load(str(case_dir / "model.onnx"), load_external_data=False)
        names = case_ops(model)
        if ops is not None:
            if not names or not set(names) <= ops:
                continue
        elif any(n.domain not in STANDARD_DOMAINS for n in model.graph.node):
            continue
        picked.append((case_dir, names))
    return picked[:limit] if limit else picked


# --------------------------------------------------------------------------- one case


def non_tensor_reason(model: onnx.ModelProto) -> str | None:
    """Why a case's inputs or outputs cannot travel in an .npz (sequence, optional, map...), or None."""
    for kind, infos in (("input", model.graph.input), ("output", model.graph.output)):
        for info in infos:
            which = info.type.WhichOneof("value")
            if which != "tensor_type":
                what = (which or "untyped").replace("_type", "")
                return f"{kind} {info.name!r} is a {what}, not a tensor"
    return None


def read_data_sets(case_dir: Path, model: onnx.ModelProto) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Each test_data_set_* as (inputs, expected outputs), keyed by the model's input / output names."""
    sets = []
    for set_dir in sorted(case_dir.glob("test_data_set_*")):
        pair = []
        for kind, infos in (("input", model.graph.input), ("output", model.graph.output)):
            arrays = {}
            for j, info in enumerate(infos):
                tensor = onnx.TensorProto()
                tensor.ParseFromString((set_dir / f"{kind}_{j}.pb").read_bytes())
                arrays[info.name] = numpy_helper.to_array(tensor)
            pair.append(arrays)
        sets.append((pair[0], pair[1]))
    return sets


@dataclass
class Ran:
    """A finished command: exit code (None: timed out) and its text."""

    code: int | None
    stdout: str
    stderr: str
    seconds: float


def rnnc(args: Sequence[str], log: Path, opts: Options) -> Ran:
    """`rnnc ARGS` as a user runs it, by this thread's runner (see `runner`); the text also goes to `log`."""
    argv = [str(a) for a in args]
    start = time.perf_counter()
    code, out, err = runner(opts).call(argv, opts.timeout_s)
    ran = Ran(code, out, err, time.perf_counter() - start)
    how = "subprocess" if opts.isolated else "in-process"
    log.write_text(f"$ rnnc {' '.join(argv)}\nexit {ran.code}  ({ran.seconds:.1f} s, {how})\n"
                   f"--- stdout\n{ran.stdout}\n--- stderr\n{ran.stderr}")
    return ran


_local = threading.local()  # each thread of run_all's pool has its own runner (and worker process)


def runner(opts: Options) -> Worker | Subprocess:
    """This thread's runner (a thread that run_all did not set up gets an unpinned one)."""
    if not hasattr(_local, "runner"):
        _local.runner = Subprocess() if opts.isolated else Worker()
    return _local.runner


def thread_env(threads: int) -> dict[str, str]:
    """The thread-count variables of OpenMP, BLAS and TVM's runtime, all set to `threads`."""
    return {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                      "TVM_NUM_THREADS")}


def in_process(argv: list[str]) -> tuple[int, str, str]:
    """`rnnc ARGV` in this process, ending as `python -m rnnc ARGV` would: (exit code, stdout, stderr).

    Whatever it raises is caught as the interpreter would report it (SystemExit's code; a traceback
    and exit 1 for anything else), so one odd case never takes its worker down.
    """
    from rnnc.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv) or 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
            if not isinstance(stop.code, (int, type(None))):
                print(stop.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - reported, as the interpreter would
            traceback.print_exc()
            code = 1
    return code, out.getvalue(), err.getvalue()


def _serve(conn: Connection, cores: list[int] | None, log: Path | None) -> None:
    """A worker process: runs each argv it receives with `in_process` and sends back the result."""
    os.setsid()  # a group of its own: a timeout kills it with whatever it started (compilers)
    if cores:  # rnnc's runtimes use every core the process may use: pinning sets their thread counts
        os.sched_setaffinity(0, cores)
        os.environ.update(thread_env(len(cores)))
    if log is not None:  # C-level output (TVM, LLVM) and a crash's traceback, out of the terminal
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        faulthandler.enable()
    import rnnc.cli  # noqa: F401 - once per worker, not once per command
    while True:
        try:
            argv = conn.recv()
        except EOFError:  # the harness closed its end
            return
        conn.send(in_process(argv))


class Worker:
    """A process that stays alive and runs rnnc commands in-process (`rnnc.cli.main(argv)`), one at a time.

    The same argv as `python -m rnnc`, minus the interpreter start and the ~5 s import of torch, TVM
    and onnxruntime. It is replaced after MAX_COMMANDS commands (loaded libraries add up), when a
    command runs past its timeout (killed: `code` None, as a subprocess's timeout) and when it dies
    (a native crash: the negative signal number, as a subprocess's). Started with 'spawn', never
    forked from the harness's threads.
    """

    def __init__(self, cores: list[int] | None = None, log: Path | None = None) -> None:
        self.cores, self.log = cores, log
        self.proc: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.left, self.stopped, self.lock = 0, False, threading.Lock()

    def call(self, argv: list[str], timeout_s: float) -> tuple[int | None, str, str]:
        with self.lock:  # against stop() from the main thread
            if self.stopped:
                return None, "", "stopped"
            if self.left == 0:
                self._kill()
                ctx = multiprocessing.get_context("spawn")
                self.conn, theirs = ctx.Pipe()
                self.proc = ctx.Process(target=_serve, args=(theirs, self.cores, self.log), daemon=True)
                self.proc.start()
                theirs.close()
                self.left = MAX_COMMANDS
            self.left -= 1
            proc, conn = self.proc, self.conn
        try:
            conn.send(argv)
            if conn.poll(timeout_s):
                return conn.recv()
            result: tuple[int | None, str, str] = (None, "", "")  # timed out
        except (EOFError, OSError):  # it died mid-command
            proc.join()
            code = proc.exitcode
            name = signal.Signals(-code).name if code and code < 0 else f"exit {code}"
            where = f"; its output went to {self.log}" if self.log else ""
            result = (code, "", f"rnnc worker process died ({name}){where}")
        with self.lock:
            self._kill()
        return result

    def stop(self) -> None:
        """Kill the worker and start no other (an interrupted run)."""
        with self.lock:
            self.stopped = True
            self._kill()

    def _kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # it and whatever it started
            self.proc.kill()
            self.proc.join()
            self.conn.close()
        self.proc, self.conn, self.left = None, None, 0


class Subprocess:
    """--isolated: each command is `python -m rnnc ARGS`, a process of its own (~5 s more per command)."""

    def __init__(self, cores: list[int] | None = None) -> None:
        self.cores, self.proc, self.stopped = cores, None, False

    def call(self, argv: list[str], timeout_s: float) -> tuple[int | None, str, str]:
        if self.stopped:
            return None, "", "stopped"
        env = {**os.environ, **thread_env(len(self.cores))} if self.cores else None
        # A session of its own, so that a timeout ends the command and whatever it started (compilers).
        with subprocess.Popen([sys.executable, "-m", "rnnc", *argv], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                              start_new_session=True, env=env) as self.proc:
            if self.cores:  # long before it imports anything that reads it
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(self.proc.pid, self.cores)
            try:
                out, err = self.proc.communicate(timeout=timeout_s)
                return self.proc.returncode, out, err
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                out, err = self.proc.communicate()
                return None, out, err

    def stop(self) -> None:
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)


def error_line(stderr: str, model: Path | None = None) -> str:
    """The line that says what went wrong: rnnc's `error:` lines, else a traceback's last line, else the first.

    Several `error:` lines (one per problem) are joined with '; '. The `MODEL: ` prefix that rnnc
    puts before each problem is dropped: it is the same path for every problem of the case.
    """
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", stderr) if ln.strip()]
    errors = [ln[len("error:"):].strip() for ln in lines if ln.startswith("error:")]
    if model is not None:
        errors = [e[len(f"{model}: "):] if e.startswith(f"{model}: ") else e for e in errors]
    if errors:
        return "; ".join(errors)
    if any(ln.startswith("Traceback") for ln in lines):
        return lines[-1]
    return lines[0] if lines else "(no message)"


def failure(ran: Ran, what: str, timeout_s: float) -> str:
    """An errored command as one reason: exit code and its line, or the timeout."""
    if ran.code is None:
        return f"{what} timed out after {timeout_s:g} s"
    return f"{what} exit {ran.code}: {error_line(ran.stderr)}"


def compare(name: str, got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> tuple[str, float | None]:
    """('' or the reason it differs, max abs error) for one output, as ONNX's backend runner judges.

    np.isclose with equal_nan is assert_allclose's criterion (|got - want| <= atol + rtol * |want|,
    NaN equal to NaN, infinities equal when of the same sign); integers, bools and strings must be equal.
    """
    if got.shape != want.shape:
        return f"output {name!r}: shape {got.shape} != expected {want.shape}", None
    if got.dtype != want.dtype:
        return f"output {name!r}: dtype {got.dtype} != expected {want.dtype}", None
    if want.dtype.kind == "V":  # ml_dtypes' bfloat16, float8 and int4 types: compare their values
        kind = np.float32 if "float" in want.dtype.name else np.int64
        got, want = got.astype(kind), want.astype(kind)
    if want.size == 0:
        return "", 0.0
    if want.dtype.kind in "fc":
        ok = np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    else:
        ok = got == want
    err = _max_abs_err(got, want)
    bad = int(ok.size - np.count_nonzero(ok))
    if bad == 0:
        return "", err
    nan = np.count_nonzero(np.isnan(got) != np.isnan(want)) if want.dtype.kind in "fc" else 0
    detail = f", NaN where not expected or missing at {nan}" if nan else ""
    err_text = "" if err is None else f", max abs err {err:.3g}"
    return f"output {name!r}: {bad}/{ok.size} values differ{err_text}{detail}", err


def _max_abs_err(got: np.ndarray, want: np.ndarray) -> float | None:
    """The largest |got - want| over positions where both are finite numbers (None for non-numbers)."""
    if want.dtype.kind not in "biufc":
        return None
    a, b = got.astype(np.complex128 if want.dtype.kind == "c" else np.float64), want.astype(
        np.complex128 if want.dtype.kind == "c" else np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    return float(np.max(np.abs(a[finite] - b[finite]))) if finite.any() else 0.0


def bind_candidates(model: onnx.ModelProto, message: str) -> list[str]:
    """The integer / bool inputs to fix with --bind: those the refusal names, else all of them."""
    ints = [i.name for i in model.graph.input
            if i.type.HasField("tensor_type")
            and onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).kind in "biu"]
    named = [n for n in ints if f"'{n}'" in message or f"--bind {n}=" in message]
    return named or ints


def _safe(name: str) -> str:
    """A file-name-safe version of an input name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def run_case(case_dir: Path, ops: list[str], opts: Options) -> list[Record]:
    """Compile one case with rnnc and run every backend that built; one record per backend.

    Never raises: a harness error (a data file that does not load, an array numpy cannot save) is
    that case's `errored` record, so one odd case cannot stop a run of two thousand.
    """
    start = time.perf_counter()
    work = opts.out / "cases" / case_dir.name
    try:
        records = _run_case(case_dir, ops, opts, work)
    except Exception as err:  # noqa: BLE001 - reported, not hidden
        records = [Record(case_dir.name, b, ERRORED, f"harness: {type(err).__name__}: {err}".splitlines()[0], ops)
                   for b in opts.backends]
    for r in records:
        r.seconds = round(time.perf_counter() - start, 2)
    if not opts.keep and all(r.outcome == PASSED for r in records):
        shutil.rmtree(work, ignore_errors=True)  # TVM libraries of every case would fill the disk
    return records


def _run_case(case_dir: Path, ops: list[str], opts: Options, work: Path) -> list[Record]:
    name = case_dir.name
    model = onnx.load(str(case_dir / "model.onnx"))

    def every(outcome: str, reason: str, **kw: Any) -> list[Record]:
        return [Record(name, b, outcome, reason, ops, **kw) for b in opts.backends]

    why = non_tensor_reason(model)
    if why:
        return every(NOT_TENSOR, why)
    data_sets = read_data_sets(case_dir, model)
    if not data_sets:
        return every(ERRORED, "harness: no test_data_set_* folder")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    compiled = work / "compiled"
    args = ["compile", case_dir / "model.onnx", "--target", "cpu", "--backends", ",".join(opts.backends),
            "--out", compiled]
    ran = rnnc(args, work / "compile.log", opts)
    bound: list[str] = []
    if ran.code == 2 and "--bind" in ran.stderr:
        # Integer / bool inputs (indices, shapes, axes) cannot be drawn at random for verification:
        # fix them to the test's own values, as a user would, and retry once.
        bound = bind_candidates(model, ran.stderr)
        binds = []
        for n in bound:
            path = work / f"bind_{_safe(n)}.npy"
            np.save(path, data_sets[0][0][n])
            binds.append(f"{n}={path}")
        if binds:
            ran = rnnc([*args, "--bind", ",".join(binds)], work / "compile_bind.log", opts)
    if ran.code == 2:
        return every(REFUSED, error_line(ran.stderr, case_dir / "model.onnx"), bound=bound)
    manifest_path = compiled / "manifest.json"
    if not manifest_path.is_file():
        return every(ERRORED, failure(ran, "compile", opts.timeout_s) + " (no manifest.json)", bound=bound)
    backends = json.loads(manifest_path.read_text()).get("backends", {})
    return [_run_backend(name, ops, b, backends.get(b), compiled, work, data_sets, bound, opts)
            for b in opts.backends]


def _run_backend(case: str, ops: list[str], backend: str, entry: dict[str, Any] | None, compiled: Path,
                 work: Path, data_sets: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
                 bound: list[str], opts: Options) -> Record:
    """Run one backend's artifact on every data set and judge its outputs."""
    rec = Record(case, backend, ERRORED, "", ops, bound=bound)
    if entry is None:
        rec.reason = "compile wrote no manifest entry for this backend"
        return rec
    rec.compile_status = status = entry.get("status")
    reason = (entry.get("reason") or "").strip()
    if status == "skipped":
        rec.outcome, rec.reason = SKIPPED, reason or "(no reason given)"
        return rec
    if status != "ok" and not entry.get("artifacts"):
        rec.reason = f"compile {status} without artifacts: {reason}"
        return rec
    worst: float | None = None
    for i, (inputs, expected) in enumerate(data_sets):
        npz, out = work / f"in_{i}.npz", work / f"out_{backend}_{i}.npz"
        np.savez(npz, **{k: v for k, v in inputs.items() if k not in bound})
        ran = rnnc(["run", compiled, "--backend", backend, "--inputs", npz, "--out", out],
                   work / f"run_{backend}_{i}.log", opts)
        if ran.code != 0:
            rec.reason = failure(ran, "run", opts.timeout_s)
            return rec
        with np.load(out, allow_pickle=False) as got:
            for name, want in expected.items():
                if name not in got.files:
                    rec.outcome, rec.reason = FAILED, f"output {name!r} missing from run's outputs {got.files}"
                    return rec
                why, err = compare(name, got[name], want, opts.rtol, opts.atol)
                if err is not None:
                    worst = err if worst is None else max(worst, err)
                if why:
                    rec.outcome, rec.reason, rec.max_abs_err = FAILED, why, worst
                    return rec
    rec.outcome, rec.max_abs_err = PASSED, worst
    if status != "ok":  # right on the test's data though compile's own verification failed: say so
        rec.reason = f"compile verification {status}: {reason}"
    return rec


# --------------------------------------------------------------------------- the whole run


def run_all(cases: Sequence[tuple[Path, list[str]]], opts: Options, jobs: int = 1,
            progress: bool = True, resume: bool = False) -> list[Record]:
    """Every case through `run_case`, `jobs` at a time; each case's records go to DIR/results.jsonl as
    it finishes, so that an interrupted run keeps what it did, and `resume` skips the cases in it.

    Each of the `jobs` threads has its own runner (a worker process, or subprocesses with
    opts.isolated) pinned to its share of the cores: with --jobs 2 on 2 cores, one core each.
    Returns the records of `cases` in results.jsonl, in case order whatever the order of completion,
    so that two runs diff cleanly.
    """
    opts.out.mkdir(parents=True, exist_ok=True)
    jsonl = opts.out / "results.jsonl"
    kept = read_records(jsonl) if resume else []
    have: dict[str, set[str]] = defaultdict(set)
    for r in kept:
        have[r.case].add(r.backend)
    todo = [(d, ops) for d, ops in cases if not set(opts.backends) <= have[d.name]]
    if progress and resume:
        print(f"resuming: {len(cases) - len(todo)} of {len(cases)} cases already in {jsonl}", file=sys.stderr)
    allowed = sorted(os.sched_getaffinity(0))
    share = max(1, len(allowed) // jobs)
    slots = iter(range(jobs))  # the pool starts at most `jobs` threads
    runners: list[Worker | Subprocess] = []

    def start_thread() -> None:
        k = next(slots)
        cores = [allowed[(k * share + j) % len(allowed)] for j in range(share)]
        _local.runner = Subprocess(cores) if opts.isolated else Worker(cores, opts.out / "workers.log")
        runners.append(_local.runner)

    start = time.perf_counter()
    with open(jsonl, "w") as sink, ThreadPoolExecutor(jobs, initializer=start_thread) as pool:
        sink.writelines(json.dumps(asdict(r)) + "\n" for r in kept)  # rewritten without a line cut short
        futures = {pool.submit(run_case, d, ops, opts): d.name for d, ops in todo}
        try:
            for n, fut in enumerate(as_completed(futures), 1):
                records = fut.result()
                sink.writelines(json.dumps(asdict(r)) + "\n" for r in records)
                sink.flush()
                if progress:
                    elapsed = time.perf_counter() - start
                    outcomes = "  ".join(f"{r.backend}:{r.outcome}" for r in records)
                    took = f"{records[0].seconds:.1f}s" if records else ""
                    print(f"[{n}/{len(todo)}] {futures[fut]}  {outcomes}  {took}  elapsed {_duration(elapsed)}  "
                          f"ETA {_duration(elapsed / n * (len(todo) - n))}", file=sys.stderr, flush=True)
        finally:  # done, or interrupted: queued cases are dropped, running commands killed
            pool.shutdown(wait=False, cancel_futures=True)
            for r in runners:
                r.stop()
    return collect(jsonl, cases, opts.backends)


def read_records(path: Path) -> list[Record]:
    """results.jsonl's records in the order written (none if missing); a line cut short by a kill is skipped."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else ():
        with contextlib.suppress(ValueError, TypeError):
            records.append(Record(**json.loads(line)))
    return records


def collect(path: Path, cases: Sequence[tuple[Path, list[str]]], backends: Sequence[str]) -> list[Record]:
    """The last record in results.jsonl of each of `cases` on each of `backends`, in case order."""
    last = {(r.case, r.backend): r for r in read_records(path)}
    return [last[d.name, b] for d, _ in cases for b in backends if (d.name, b) in last]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def tally(records: Iterable[Record]) -> dict[str, Counter[str]]:
    """Outcome counts per backend."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in records:
        counts[r.backend][r.outcome] += 1
    return dict(counts)


def normalise(reason: str) -> str:
    """A reason with its particulars (paths, quoted names, shapes, numbers) blanked, so repeats group.

    A refusal that lists one problem per input (x, then y) becomes one problem: repeats are dropped.
    """
    parts = []
    for part in reason.split("; "):
        text = re.sub(r"(?<![\w.])(?:/[^\s:;,'\"()]+)+", "PATH", part)
        text = re.sub(r"(?<!\w)'[^']*'(?!\w)|(?<!\w)\"[^\"]*\"(?!\w)", "'…'", text)
        text = re.sub(r"(?<!\w)\(\s*\d+(?:\s*,\s*\d*)*\s*\)|(?<!\w)\[\s*\d+(?:\s*,\s*\d+)*\s*\]", "SHAPE", text)
        text = re.sub(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])", "N", text).strip()
        if text not in parts:
            parts.append(text)
    return "; ".join(parts)


def table(records: Sequence[Record], backends: Sequence[str]) -> str:
    """Counts per backend and in total, one column per outcome."""
    counts = tally(records)
    rows = [["backend", "cases", *OUTCOMES]]
    total: Counter[str] = Counter()
    for b in backends:
        c = counts.get(b, Counter())
        total.update(c)
        rows.append([b, str(sum(c.values())), *(str(c[o]) for o in OUTCOMES)])
    rows.append(["total", str(sum(total.values())), *(str(total[o]) for o in OUTCOMES)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def summary_md(records: Sequence[Record], opts: Options) -> str:
    """summary.md: the table, then per backend every case that did not pass, grouped by reason."""
    lines = [f"# ONNX node tests through rnnc (onnx {onnx.__version__})", "",
             f"Tolerance: rtol {opts.rtol:g}, atol {opts.atol:g} (exact for integers and bools).", "",
             "```", table(records, opts.backends), "```", ""]
    for b in opts.backends:
        mine = [r for r in records if r.backend == b and (r.outcome != PASSED or r.reason)]
        lines += [f"## {b}", ""]
        if not mine:
            lines += ["Every case passed.", ""]
            continue
        for outcome in OUTCOMES:  # passes listed only with a note (compile's own verification failed)
            groups: dict[str, list[Record]] = defaultdict(list)
            for r in mine:
                if r.outcome == outcome:
                    groups[normalise(r.reason)].append(r)
            if not groups:
                continue
            title = "passed, with a note" if outcome == PASSED else outcome
            lines += [f"### {title} ({sum(map(len, groups.values()))})", ""]
            for reason, rs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
                lines.append(f"- **{len(rs)}** × `{reason}`")
                for r in rs:
                    lines.append(f"  - {r.case}: {r.reason}")
            lines.append("")
    return "\n".join(lines)


def write_results(opts: Options, records: Sequence[Record], partial: bool = False) -> None:
    """DIR/results.json, atomically; `partial`: some selected cases are not in it (an interrupted run)."""
    doc = {"onnx": onnx.__version__, "backends": list(opts.backends), "rtol": opts.rtol, "atol": opts.atol,
           "partial": partial, "totals": {b: dict(c) for b, c in tally(records).items()},
           "records": [asdict(r) for r in records]}
    tmp = opts.out / f".results.json.{os.getpid()}"
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(opts.out / "results.json")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", help="comma list of op types: cases whose nodes are all among them "
                                 "(default: every case of standard-domain ops)")
    p.add_argument("--match", help="regular expression the case name must contain, e.g. '^test_lstm'")
    p.add_argument("--backends", default=",".join(DEFAULT_BACKENDS), help="comma list (default %(default)s)")
    p.add_argument("--limit", type=int, help="run the first N selected cases only")
    p.add_argument("--jobs", type=int, default=1, help="cases in parallel (default 1)")
    p.add_argument("--out", type=Path, default=Path("build/onnx-node-tests"), help="default %(default)s")
    p.add_argument("--data", type=Path, help="a folder of test_* cases (default: onnx's, or generated)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds per rnnc command (default %(default)g)")
    p.add_argument("--keep", action="store_true", help="keep the work folders of cases that passed too")
    p.add_argument("--resume", action="store_true", help="skip the cases already in DIR/results.jsonl")
    p.add_argument("--isolated", action="store_true",
                   help="run each command as a `python -m rnnc` subprocess (~5 s more per command) "
                        "instead of in long-lived worker processes")
    p.add_argument("--list", action="store_true", help="print the selected cases and their ops, run nothing")
    args = p.parse_args(argv)

    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    ops = {o.strip() for o in args.ops.split(",") if o.strip()} if args.ops else None
    cases = select_cases(node_data_dir(args.data), ops, args.match, args.limit)
    if args.list:
        for case_dir, names in cases:
            print(f"{case_dir.name}  {','.join(names)}")
        return 0
    if not cases:
        print("no case matches", file=sys.stderr)
        return 2
    opts = Options(backends, args.out, args.timeout, args.keep, isolated=args.isolated)
    try:
        records, partial = run_all(cases, opts, max(1, args.jobs), resume=args.resume), False
    except KeyboardInterrupt:
        records, partial = collect(opts.out / "results.jsonl", cases, backends), True
        print("interrupted: results so far below; --resume continues", file=sys.stderr)
    write_results(opts, records, partial)
    (opts.out / "summary.md").write_text(summary_md(records, opts))
    print(table(records, backends))
    print(f"wrote {opts.out / 'results.json'} and {opts.out / 'summary.md'}")
    return 130 if partial else 0


if __name__ == "__main__":
    sys.exit(main())
