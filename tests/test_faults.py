"""Accidents of real machines (issue 14): a compiled DIR whose files were cut short, zeroed or
swapped; a full disk under compile and bench; two compiles into one --out; a compile killed
half-way. Each ends in one line and an exit code, with nothing half-written and no changed
library loaded. Real files, real subprocesses, real signals."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import rnnc
from rnnc import api
from rnnc.errors import ArtifactChanged
from tests.conftest import make_spec

BACKENDS = "torch,torchscript,onnxruntime,openvino,tvm"
OWNER = {"model.onnx": "onnxruntime", "model.ts": "torchscript", "torch_state.pt": "torch",
         "tvm/model.so": "tvm", "tvm/tvm.json": "tvm", "openvino/model.xml": "openvino",
         "openvino/model.bin": "openvino"}
pytestmark = pytest.mark.xdist_group("faults")  # one module fixture compiles both DIRs once


def _spec(cell: str, hidden: int = 6) -> dict:
    return make_spec(name=f"f-{cell}", rnn={"cell": cell, "hidden_size": hidden},
                     shapes={"batch_sizes": [1], "seq_lens": [3]})


def _rnnc(*args: object, limit_bytes: int | None = None, **kw) -> subprocess.CompletedProcess:
    """`rnnc ARGS` in a process of its own (a signal, a file-size limit), its output captured."""
    def limit() -> None:  # writes past `limit_bytes` fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "rnnc", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=limit if limit_bytes is not None else None, timeout=600, **kw)


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two compiled DIRs of different models (an LSTM, and a GRU whose files are swapped in)."""
    root = tmp_path_factory.mktemp("faults")
    out = []
    for cell in ("lstm", "gru"):
        spec = root / f"{cell}.yaml"
        spec.write_text(yaml.safe_dump(_spec(cell)))
        manifest, d = api.compile(spec, "cpu", BACKENDS.split(","), root / cell)
        assert all(b.status == "ok" for b in manifest.backends.values()), manifest.backends
        out.append(d)
    np.savez(root / "x.npz", features=np.random.default_rng(0).standard_normal((1, 3, 5)).astype(np.float32))
    return out[0], out[1]


def test_every_file_compile_wrote_has_its_digest(dirs) -> None:
    good, _ = dirs
    files = json.loads((good / "manifest.json").read_text())["files"]
    assert set(OWNER) <= set(files)
    assert set(files) == {p for p in _tree(good) if p != "manifest.json"}
    assert all(len(d["sha256"]) == 64 and d["bytes"] == (good / p).stat().st_size for p, d in files.items())


@pytest.mark.parametrize("how", ["truncate", "zero", "swap", "delete"])
@pytest.mark.parametrize("name", sorted(OWNER))
def test_a_changed_artifact_is_refused_by_verify_and_run_in_one_line(dirs, tmp_path, cli, name, how) -> None:
    good, other = dirs
    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    path = broken / name
    size = path.stat().st_size
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: size // 2])
    elif how == "zero":
        path.write_bytes(bytes(size))
    elif how == "swap":
        shutil.copyfile(other / name, path)
    else:
        path.unlink()
    for args in (["verify", broken], ["run", broken, "--backend", OWNER[name], "--inputs", good.parent / "x.npz",
                                      "--out", tmp_path / "y.npz"]):
        code, out, err = cli(*args)
        assert code == 1, (args, out, err)
        assert len(err.strip().splitlines()) == 1 and str(path) in err, err
        assert "Traceback" not in out + err
    assert not (tmp_path / "y.npz").exists()


def test_load_refuses_a_truncated_library_before_loading_it(dirs, tmp_path) -> None:
    """A truncated .so, dlopen'ed, dies with SIGBUS: reaching the assertion is the test."""
    broken = tmp_path / "broken"
    shutil.copytree(dirs[0], broken)
    so = broken / "tvm" / "model.so"
    so.write_bytes(so.read_bytes()[:4096])
    with pytest.raises(ArtifactChanged, match="model.so"):
        rnnc.load(broken, "tvm")
    assert rnnc.load(dirs[0], "tvm") is not None  # the intact DIR still loads


def test_a_full_disk_stops_compile_in_one_line_and_keeps_the_previous_dir(dirs, tmp_path) -> None:
    out = tmp_path / "out"
    shutil.copytree(dirs[0], out)
    before = _tree(out)
    spec = tmp_path / "big.yaml"
    spec.write_text(yaml.safe_dump(_spec("lstm", hidden=96)))
    done = _rnnc("compile", spec, "--target", "cpu", "--backends", "torch,onnxruntime", "--out", out,
                 limit_bytes=60_000)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "no space left" in done.stderr
    assert "Traceback" not in done.stderr
    assert _tree(out) == before  # the previous DIR, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "big.yaml", "out"]  # no staging left


def test_a_full_disk_stops_bench_keeping_every_finished_row_and_resume_completes(dirs, tmp_path) -> None:
    out = tmp_path / "d"
    shutil.copytree(dirs[0], out)
    sweep = ["bench", out, "--backends", "onnxruntime", "--seq-lens", "2,3,4,5,6,7", "--batch-sizes", "1,2"]
    stopped = _rnnc(*sweep, limit_bytes=30_000)  # a row is ~6 KB of samples
    assert stopped.returncode == 1, stopped.stderr
    last = stopped.stderr.strip().splitlines()[-1]
    assert "no space left" in last and "--resume" in last and "Traceback" not in stopped.stderr
    kept = json.loads((out / "report.json").read_text())["rows"]
    assert 0 < len(kept) < 12 and f"the {len(kept)} rows finished before are kept" in last
    done = _rnnc(*sweep, "--resume")
    assert done.returncode == 0, done.stderr
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert len(rows) == 12
    assert [r for r in rows if (r["batch_size"], r["seq_len"]) in {(k["batch_size"], k["seq_len"]) for k in kept}] \
        == kept  # kept as they were, not measured again


def test_two_compiles_into_one_out_wait_for_each_other(tmp_path) -> None:
    specs = []
    for cell in ("lstm", "gru"):
        specs.append(tmp_path / f"{cell}.yaml")
        specs[-1].write_text(yaml.safe_dump(_spec(cell)))
    out = tmp_path / "out"
    args = ["--target", "cpu", "--backends", "onnxruntime,tvm", "--out", out]
    first = subprocess.Popen([sys.executable, "-m", "rnnc", "compile", specs[0], *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: any(p.name.startswith(".out.staging-") for p in tmp_path.iterdir()))
    second = _rnnc("compile", specs[1], *args)
    first_err = first.communicate(timeout=600)[1]
    assert first.returncode == 0 and second.returncode == 0, (first_err, second.stderr)
    assert "waiting for it to finish" in second.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "f-gru"  # the one that finished last, whole
    assert _rnnc("verify", out).returncode == 0
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


def test_a_compile_terminated_half_way_leaves_the_previous_dir_and_no_partial_one(dirs, tmp_path) -> None:
    out = tmp_path / "out"
    shutil.copytree(dirs[0], out)
    before = _tree(out)
    spec = tmp_path / "gru.yaml"
    spec.write_text(yaml.safe_dump(_spec("gru")))
    proc = subprocess.Popen([sys.executable, "-m", "rnnc", "compile", spec, "--target", "cpu", "--out", out],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: any((p / "model.onnx").exists() for p in tmp_path.glob(".out.staging-*")))
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert _tree(out) == before
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


def test_a_read_only_or_misplaced_out_is_one_line_exit_2(tmp_path, cli, write_spec) -> None:
    spec = write_spec(_spec("rnn"))
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        code, _, err = cli("compile", spec, "--target", "cpu", "--backends", "torch", "--out", out)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "afile" in err, err
    if os.geteuid() != 0:  # root writes anywhere: the read-only case is then the tmpfs one in the note
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        code, _, err = cli("compile", spec, "--target", "cpu", "--backends", "torch", "--out", ro / "d")
        assert code == 2 and "permission denied" in err, err


def _wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
