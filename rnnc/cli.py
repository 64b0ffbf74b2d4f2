"""The `rnnc` command: parses flags, calls the library API, prints tables, sets the exit code.

This is the one place that prints, reads the environment and exits. Exit codes (SPEC section 2):
0 all went well; 1 a check failed; 2 bad input; 3 nothing could run.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rnnc.errors import INTERRUPTED, ArtifactChanged, OutOfResources, UserError
from rnnc.progress import Progress

if TYPE_CHECKING:
    from rnnc.records.manifest import Manifest


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (exit 2) instead of usage and a message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    previous = _terminate_as_interrupt()
    try:
        return _main(argv)
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])


def _main(argv: Sequence[str] | None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        return args.handler(args)
    except UserError as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except (ArtifactChanged, OutOfResources) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (OSError, MemoryError) as err:  # the machine (a full disk writing a plot), not rnnc's bug
        from rnnc.records import outdir

        explained = outdir.explain(err, Path(getattr(err, "filename", None) or "."))
        if explained is err:
            raise
        print(f"error: {explained}", file=sys.stderr)
        return getattr(explained, "exit_code", 1)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _terminate_as_interrupt() -> Any:
    """SIGTERM (a CI job cancelled, `kill`) unwinds like Ctrl-C, so that a compile's staging
    directory is removed and a bench's report stays whole, instead of dying mid-write. Returns
    the handlers it replaced (None off the main thread, where signals cannot be set)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        INTERRUPTED.set()
        raise KeyboardInterrupt

    INTERRUPTED.clear()
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    for signum, handler in zip((signal.SIGINT, signal.SIGTERM), previous):
        if handler is not signal.SIG_IGN:  # a job started with `&` or nohup keeps ignoring it
            signal.signal(signum, interrupt)
    return previous


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rnnc", description="Compile, verify and benchmark recurrent networks.")
    from rnnc import __version__

    parser.add_argument("--version", action="version", version=f"rnnc {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("summary", help="layer table with output shapes and parameter counts")
    p.add_argument("spec")
    p.add_argument("--shapes", help="sizes of symbolic inputs of a model file, e.g. tokens:1x64")
    p.add_argument("--bind", help="inputs of a model file fixed at compile time, e.g. sr=16000 or w=w.npy")
    p.add_argument("--state", help="state pairs of a model file, IN=OUT,... (found by name where unambiguous)")
    p.set_defaults(handler=_summary)

    p = sub.add_parser("compile", help="build, lower, verify and write DIR")
    p.add_argument("spec", help="a YAML spec, an ONNX model or a TorchScript file")
    _target(p)
    p.add_argument("--backends", default="all", help="comma list of backends, or all (default)")
    p.add_argument("--out", help="output directory (default build/<name>-<target>/)")
    p.add_argument("--shapes", help="sizes of symbolic inputs of a model file, e.g. tokens:1x64")
    p.add_argument("--bind", help="inputs of a model file fixed at compile time, e.g. sr=16000 or w=w.npy")
    p.add_argument("--state", help="state pairs of a model file, IN=OUT,... (found by name where unambiguous)")
    p.add_argument("--tune", type=float, metavar="SECONDS", default=0.0,
                   help="time budget for tuning the TVM kernels (cached on disk)")
    p.set_defaults(handler=_compile)

    p = sub.add_parser("verify", help="equivalence of every backend against a float64 reference")
    p.add_argument("spec", help="a YAML spec, a model file, or a compiled DIR")
    _target(p, required=False)
    p.add_argument("--backends", default=None, help="comma list of backends, or all (default)")
    p.add_argument("--shapes", help="sizes of symbolic inputs of a model file, e.g. tokens:1x64")
    p.add_argument("--bind", help="inputs of a model file fixed at compile time, e.g. sr=16000 or w=w.npy")
    p.add_argument("--state", help="state pairs of a model file, IN=OUT,... (found by name where unambiguous)")
    p.add_argument("--chain", type=_int_list("--chain"), metavar="N",
                   help="also N consecutive calls with the state carried; the worst error over the chain")
    p.set_defaults(handler=_verify)

    p = sub.add_parser("bench", help="throughput per sequence length and batch size")
    p.add_argument("spec", help="a YAML spec, a model file, a compiled DIR, or a folder of specs")
    _target(p, required=False)
    p.add_argument("--seq-lens", type=_int_list("--seq-lens"))
    p.add_argument("--batch-sizes", type=_int_list("--batch-sizes"))
    p.add_argument("--backends", default="all")
    p.add_argument("--out", help="report directory")
    p.add_argument("--resume", action="store_true", help="run only the rows missing from --out's report")
    p.add_argument("--check", action="store_true", help="verify every backend's output in the same run")
    p.add_argument("--against", metavar="OLD_DIR",
                   help="A/B: also measure this older build (a compiled DIR or a bench --out) in the same rounds")
    p.add_argument("--history", help="append the report to this history (an SQLite path or an SQLAlchemy URL)")
    p.add_argument("--revision", help="the revision the history records (default: git HEAD of the current "
                                      "directory, else $GITHUB_SHA or $CI_COMMIT_SHA)")
    p.add_argument("--threads", default="all",
                   help="threads per runtime: all (every core, the default), N, or default (each runtime's own)")
    p.add_argument("--shapes", help="sizes of symbolic inputs of a model file, e.g. tokens:1x64")
    p.add_argument("--bind", help="inputs of a model file fixed at compile time, e.g. sr=16000 or w=w.npy")
    p.add_argument("--state", help="state pairs of a model file, IN=OUT,... (found by name where unambiguous)")
    p.add_argument("--stream", action="store_true",
                   help="time each call as one chunk of seq-len steps, the state carried from the call before")
    p.add_argument("--chunk-ms", type=_positive("--chunk-ms"), metavar="MS",
                   help="with --stream: the real time one chunk stands for, for the real-time factor (rtf)")
    p.add_argument("--cluster", metavar="ADDRESS",
                   help="run the sweep on a Ray cluster: local (started here for the run), auto, HOST:PORT or "
                        "ray://HOST:PORT (pip install 'rnnc[cluster]')")
    p.add_argument("--on", action="append", metavar="KEY=PATTERN,...",
                   help="with --cluster: the machine classes to sweep, e.g. \"cpu=*EPYC*,gpu=H100\" "
                        "(keys cpu, isa, gpu, class; repeat --on for more classes)")
    p.set_defaults(handler=_bench)

    p = sub.add_parser("node", help="join this machine to a Ray cluster as a bench node (wraps ray start)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--address", help="the cluster's head, HOST:PORT")
    where.add_argument("--head", action="store_true", help="start a new cluster with this machine as its head")
    p.add_argument("--class", dest="machine_class", metavar="NAME",
                   help="this node's machine class (default: one named after its CPU, ISA and GPU)")
    p.add_argument("--name", help="the node's name in reports (default: the host name)")
    p.add_argument("--slots", type=int, default=1, help="bench slots (default 1: one bench at a time; "
                   "0 for a head that only coordinates)")
    p.add_argument("--print", dest="print_only", action="store_true",
                   help="print the ray start command instead of running it")
    p.add_argument("ray_args", nargs="*", metavar="-- RAY_START_ARGS",
                   help="more ray start flags, after --, e.g. -- --num-cpus 8")
    p.set_defaults(handler=_node)

    p = sub.add_parser("report", help="render Markdown and HTML with plots from a report")
    p.add_argument("report")
    p.add_argument("--baseline")
    p.add_argument("--out", help="where to write (default: beside the report)")
    p.set_defaults(handler=_report)

    p = sub.add_parser("gate", help="fail when a row got slower than its baseline")
    p.add_argument("report")
    p.add_argument("--baseline", help="the report to compare with (default for an A/B bench: its other half)")
    p.add_argument("--history", help="judge each row against the noise its history has shown (path or URL)")
    p.add_argument("--max-regression", default="10%", type=_percent)
    p.add_argument("--mode", default="auto", help="auto (default), ab, common, plain, normalized, history")
    p.add_argument("--normalize", action="store_true", help="the same as --mode normalized")
    p.add_argument("--common-mode", action="store_true", help="the same as --mode common")
    p.set_defaults(handler=_gate)

    p = sub.add_parser("run", help="run one backend of DIR on your own inputs")
    p.add_argument("dir")
    p.add_argument("--backend", required=True)
    p.add_argument("--inputs", required=True, help=".npz keyed by the model's input names")
    p.add_argument("--out", help="output .npz (default: beside the inputs)")
    p.set_defaults(handler=_run)

    p = sub.add_parser("history", help="each row's trend over the runs of a history, with its change points")
    p.add_argument("history", help="a history: an SQLite file or an SQLAlchemy URL")
    p.add_argument("--model", help="only this model's rows")
    p.add_argument("--out", help="where to write history.png (default: beside the history file; . for a URL)")
    p.set_defaults(handler=_history)
    return parser


def _target(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--target", choices=["cpu", "cuda"], required=required, default=None if required else None)


def _int_list(flag: str) -> Any:
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"{flag}: expected a comma list of integers, got {text!r}") from None
        if not values or any(v < 1 for v in values):
            raise UserError(f"{flag}: every value must be >= 1, got {text!r}")
        return values

    return parse


def _positive(flag: str) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"{flag}: expected a number, got {text!r}") from None
        if not (value > 0 and value != float("inf")):
            raise UserError(f"{flag}: must be > 0, got {text!r}")
        return value

    return parse


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") or float(text.rstrip("%")) > 1 else 1)
    except ValueError:
        raise UserError(f"--max-regression: expected a percentage such as 10%, got {text!r}") from None
    if value <= 0:
        raise UserError(f"--max-regression: must be > 0, got {text!r}")
    return value


def _shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]] | None:
    if not getattr(args, "shapes", None):
        return None
    from rnnc.graphs.from_onnx import parse_shapes

    return parse_shapes(args.shapes)


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    """--bind and --state, parsed (each problem one line, exit 2); their parsers (onnx) load only when given."""
    bind = state = None
    if getattr(args, "bind", None):
        from rnnc.graphs.bind import parse_bind

        bind = parse_bind(args.bind)
    if getattr(args, "state", None):
        from rnnc.graphs.state import parse_state

        state = parse_state(args.state)
    return {"bind": bind, "state": state}


def _progress() -> Progress:
    return Progress(sys.stderr)


def _summary(args: argparse.Namespace) -> int:
    from rnnc.graphs import load_model
    from rnnc.graphs.summary import render, summarize

    model = load_model(args.spec, _shapes(args), **_model_options(args))
    print(render(model, summarize(model)))
    return 0


def _tune_cache() -> Path:
    """Where TVM tuning records live between runs: $XDG_CACHE_HOME/rnnc/tvm-tune (~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnc" / "tvm-tune"


def _compile(args: argparse.Namespace) -> int:
    from rnnc import api, targets
    from rnnc.pipeline import exit_code

    backends = targets.parse_backends(args.backends)
    if args.tune < 0:
        raise UserError(f"--tune: must be >= 0 seconds, got {args.tune}")
    manifest, out_dir = api.compile(args.spec, args.target, backends, args.out, _shapes(args),
                                    {"tune_s": args.tune, "tune_cache": _tune_cache()}, _progress(),
                                    **_model_options(args))
    print(_table(manifest))
    print(f"wrote {out_dir}/manifest.json")
    return exit_code(manifest)


def _verify(args: argparse.Namespace) -> int:
    from rnnc import api, targets
    from rnnc.pipeline import exit_code

    backends = targets.parse_backends(args.backends) if args.backends else None
    chain = args.chain[0] if args.chain else None
    manifest = api.verify(args.spec, args.target, backends, _shapes(args), _progress(), chain=chain,
                          **_model_options(args))
    print(_table(manifest))
    return exit_code(manifest)


def _bench(args: argparse.Namespace) -> int:
    from rnnc import api, host, targets
    from rnnc.reports.tables import results_table

    backends = targets.parse_backends(args.backends)
    threads = {"all": host.cpu_count(), "default": None}.get(args.threads) if args.threads in ("all", "default") \
        else _int_list("--threads")(args.threads)[0]
    fleet = {"cluster": args.cluster, "on": args.on}
    if args.cluster is not None and args.threads == "all":
        threads = "all"  # each node's own cores, counted there
    report = api.bench(args.spec, args.target or "cpu", backends, seq_lens=args.seq_lens,
                       batch_sizes=args.batch_sizes, out_dir=Path(args.out) if args.out else None,
                       resume=args.resume, check=args.check, progress=_progress(), threads=threads,
                       shapes=_shapes(args), against=args.against, history=args.history,
                       revision=args.revision or (_revision() if args.history else None),
                       stream=args.stream, chunk_ms=args.chunk_ms, **fleet, **_model_options(args))
    print(results_table(report))
    for path in report.get("written", []):
        print(f"wrote {path}")
    if "history_run" in report:
        from rnnc.history import describe

        print(f"recorded as run #{report['history_run']} in {describe(args.history)}")
    return int(report["exit_code"])


def _node(args: argparse.Namespace) -> int:
    import shlex
    import subprocess

    from rnnc import host
    from rnnc.bench import cluster

    if args.slots < (0 if args.head else 1):  # a head of 0 slots coordinates and benches nothing
        raise UserError(f"--slots: must be >= {0 if args.head else 1}, got {args.slots}")
    command = cluster.start_command(None if args.head else args.address, args.name,
                                    host.machine_class(args.machine_class), args.slots, args.ray_args)
    print(shlex.join([f"{k}={v}" for k, v in cluster.NODE_ENV.items()] + command))
    if args.print_only:
        return 0
    cluster.import_ray()  # the one line naming the extra, rather than "ray: command not found"
    beside = Path(sys.executable).with_name("ray")  # the ray of this environment, activated or not
    proc = subprocess.Popen([str(beside) if beside.is_file() else "ray", *command[1:]],
                            env=os.environ | cluster.NODE_ENV, stderr=subprocess.PIPE, text=True)
    said = cluster.StartOutput()
    for line in proc.stderr or ():
        if said.shown(line):
            sys.stderr.write(line)
    if proc.wait() != 0:
        raise UserError(f"ray start: {said.failure()}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from rnnc.reports import render

    written = render(Path(args.report), Path(args.baseline) if args.baseline else None,
                     Path(args.out) if args.out else None)
    for path in written:
        print(f"wrote {path}")
    return 0


def _revision() -> str | None:
    """The revision a history records for this run: the checkout the command runs in, else CI's."""
    from rnnc import host

    sha = host.git_revision(Path.cwd()) or os.environ.get("GITHUB_SHA") or os.environ.get("CI_COMMIT_SHA")
    return sha[:12] if sha else None


def _gate(args: argparse.Namespace) -> int:
    from rnnc.reports import gate

    modes = [m for m, on in (("normalized", args.normalize), ("common", args.common_mode)) if on]
    if len(modes) > 1 or (modes and args.mode != "auto"):
        raise UserError("--mode, --normalize and --common-mode are alternatives: choose one")
    code, table = gate(Path(args.report), Path(args.baseline) if args.baseline else None, args.max_regression,
                       modes[0] if modes else args.mode, args.history)
    print(table)
    return code


def _run(args: argparse.Namespace) -> int:
    from rnnc import api, targets

    targets.backend(args.backend)  # an unknown name is a one-line error before any work
    out = api.run(args.dir, args.backend, args.inputs, args.out)
    print(f"wrote {out}")
    return 0


def _history(args: argparse.Namespace) -> int:
    from rnnc import api

    text, written = api.history(args.history, args.model, Path(args.out) if args.out else None)
    print(text)
    for path in written:
        print(f"wrote {path}")
    return 0


def _table(manifest: Manifest) -> str:
    """The result table of compile and verify: one row per backend, worst errors over all shapes."""
    generates = any(b.verification and b.verification.tokens for b in manifest.backends.values())
    rows = [("backend", "status", "max_abs_err", "rel_err", "tolerance", "shapes")
            + (("tokens (ties)",) if generates else ()) + ("build_s", "reason")]
    for name, b in manifest.backends.items():
        v = b.verification
        fmt = lambda x: "-" if x is None else f"{x:.2e}"  # noqa: E731
        tokens = (f"{v.tokens} ({v.ties})" if v and v.tokens else "-",) if generates else ()
        rows.append((name, b.status, fmt(v and v.max_abs_err), fmt(v and v.rel_err), fmt(v and v.tolerance),
                     f"{len(b.shapes)}, {v.chain} calls" if v and v.chain else str(len(b.shapes)), *tokens,
                     "-" if b.build_time_s is None else f"{b.build_time_s:.2f}",
                     b.reason or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return f"{manifest.name} on {manifest.target}\n" + "\n".join(line.rstrip() for line in lines)


if __name__ == "__main__":
    sys.exit(main())
