"""records.outdir: a DIR replaced whole, never mixed, with what no compile wrote carried over."""
from __future__ import annotations

import errno
import json
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from rnnc.errors import OutOfResources, UserError
from rnnc.records import outdir


def _old_dir(path: Path) -> Path:
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({"files": {"model.onnx": {}, "tvm/model.so": {}},
                                                    "backends": {"tvm": {"artifacts": ["tvm/model.so"]}}}))
    (path / "model.onnx").write_text("old")
    (path / "tvm").mkdir()
    (path / "tvm" / "model.so").write_text("old")
    (path / "report.json").write_text("{}")  # a bench's, no compile's
    (path / "notes").mkdir()
    (path / "notes" / "mine.txt").write_text("the user's")
    return path


def test_the_new_dir_replaces_the_old_and_keeps_what_no_compile_wrote(tmp_path) -> None:
    out = _old_dir(tmp_path / "out")
    with outdir.replacing(out) as staging:
        assert staging.parent == tmp_path and staging != out
        (staging / "model.onnx").write_text("new")
        (staging / "manifest.json").write_text("{}")
        assert (out / "model.onnx").read_text() == "old"  # untouched until the block ends
    assert (out / "model.onnx").read_text() == "new"
    assert not (out / "tvm").exists()
    assert (out / "report.json").read_text() == "{}" and (out / "notes" / "mine.txt").read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]


def test_a_failure_leaves_the_old_dir_and_no_staging(tmp_path) -> None:
    out = _old_dir(tmp_path / "out")
    with pytest.raises(RuntimeError):
        with outdir.replacing(out) as staging:
            (staging / "model.onnx").write_text("half")
            raise RuntimeError("build failed")
    assert (out / "model.onnx").read_text() == "old" and (out / "tvm" / "model.so").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]


def test_a_new_out_appears_only_when_complete_and_stale_staging_is_swept(tmp_path) -> None:
    (tmp_path / ".out.staging-1-dead").mkdir()  # a compile killed with SIGKILL
    with outdir.replacing(tmp_path / "out") as staging:
        assert not (tmp_path / "out").exists()
        (staging / "manifest.json").write_text("{}")
    assert (tmp_path / "out" / "manifest.json").exists()
    assert not list(tmp_path.glob(".out.staging-*"))


def test_a_second_compile_waits_for_the_lock(tmp_path) -> None:
    out = tmp_path / "out"
    held = FileLock(str(tmp_path / ".out.lock"), thread_local=False)  # released by another thread
    held.acquire()
    said: list[str] = []
    threading.Thread(target=lambda: (time.sleep(0.5), held.release()), daemon=True).start()
    started = time.monotonic()
    with outdir.replacing(out, said.append) as staging:
        (staging / "manifest.json").write_text("{}")
    assert time.monotonic() - started >= 0.4
    assert said == [f"another rnnc compile is writing {out.absolute()}: waiting for it to finish"]


def test_os_errors_become_one_line_with_the_exit_code_of_their_kind(tmp_path) -> None:
    out = tmp_path / "out"
    full = outdir.explain(OSError(errno.ENOSPC, "No space left on device"), out, tmp_path)
    assert isinstance(full, OutOfResources) and "no space left" in str(full) and "MiB free" in str(full)
    assert isinstance(outdir.explain(RuntimeError("ld: final link failed: No space left on device"), out),
                      OutOfResources)
    assert isinstance(outdir.explain(MemoryError(), out), OutOfResources)
    for code, words in [(errno.EROFS, "read-only"), (errno.EACCES, "permission denied"),
                        (errno.ENOTDIR, "a file stands where a directory should be")]:
        err = outdir.explain(OSError(code, "x", str(tmp_path / ".out.lock")), out)
        assert isinstance(err, UserError) and words in str(err) and str(out) in str(err)
    other = ValueError("a bug")
    assert outdir.explain(other, out) is other
