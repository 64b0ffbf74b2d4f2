"""Putting a compiled DIR on disk whole: built beside `--out`, moved into place when complete, one
compile at a time per `--out`.

A compile writes for minutes (TVM libraries, verification) and can be killed, run out of disk, or
meet a second compile into the same `--out` (two CI jobs, two terminals). Written in place, any of
these left a DIR that mixed two models or lacked its manifest. So `replacing` hands out a staging
directory beside `--out` (same file system: the move is a rename), and only once everything is
written swaps it with the old DIR (one `renameat2(RENAME_EXCHANGE)` where Linux has it, so a
reader sees the old DIR or the new one, never neither). Files of the old DIR that no compile
wrote (a bench's report.json, a user's notes) are carried into the new one, hard-linked, so
nothing of the user's is lost. A lock file beside `--out` makes a second compile wait; a failure
or an interrupt removes the staging directory and leaves the old DIR as it was.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from rnnc.errors import OutOfResources, UserError
from rnnc.records.manifest import MANIFEST

__all__ = ["LOCK_WAIT_S", "explain", "out_of_resources", "replacing"]
LOCK_WAIT_S = 900.0  # a second compile into the same --out waits this long for the first, then refuses
_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_SPACE_WORDS = ("No space left on device", "Disk quota exceeded", "file write failed")


@contextmanager
def replacing(out_dir: Path, notify: Callable[[str], None] = lambda line: None) -> Iterator[Path]:
    """A fresh staging directory that becomes `out_dir` when the block ends without an exception."""
    out_dir = Path(out_dir).absolute()
    if out_dir.is_symlink():
        out_dir = out_dir.resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a directory")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(parent / f".{out_dir.name}.lock"))
        _acquire(lock, out_dir, notify)
    except OSError as err:
        raise explain(err, out_dir) from None
    try:
        for stale in parent.glob(f".{out_dir.name}.staging-*"):  # left by a killed compile: the lock is ours
            shutil.rmtree(stale, ignore_errors=True)
        try:
            staging = _new_dir(parent, f".{out_dir.name}.staging-")
        except OSError as err:
            raise explain(err, out_dir) from None
        try:
            yield staging
            _carry_over(out_dir, staging)
            _swap(staging, out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        lock.release()


def _new_dir(parent: Path, prefix: str) -> Path:
    """A fresh directory with the permissions the umask gives (mkdtemp's 0700 would become DIR's)."""
    path = parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def _acquire(lock: FileLock, out_dir: Path, notify: Callable[[str], None]) -> None:
    try:
        lock.acquire(timeout=0)
        return
    except Timeout:
        notify(f"another rnnc compile is writing {out_dir}: waiting for it to finish")
    try:
        lock.acquire(timeout=LOCK_WAIT_S)
    except Timeout:
        raise UserError(f"--out {out_dir}: another rnnc compile has been writing it for over "
                        f"{LOCK_WAIT_S:.0f} s: choose another --out or wait for it") from None


def _compile_outputs(out_dir: Path) -> set[str]:
    """The top-level names in an old DIR that a compile wrote (its manifest says which), so that
    everything else in it is carried into the new DIR."""
    names = {MANIFEST}
    try:
        data = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return names
    if not isinstance(data, dict):
        return names
    paths = list(data.get("files") or {})
    for record in (data.get("backends") or {}).values():
        paths += list(record.get("artifacts") or []) if isinstance(record, dict) else []
    paths += ["model.onnx", str((data.get("source") or {}).get("file") or "model.onnx")]
    return names | {Path(p).parts[0] for p in paths if p and Path(p).parts}


def _carry_over(out_dir: Path, staging: Path) -> None:
    if not out_dir.is_dir():
        return
    written = _compile_outputs(out_dir)
    for entry in out_dir.iterdir():
        if entry.name in written or (staging / entry.name).exists() or entry.is_symlink():
            continue
        if entry.is_dir():
            shutil.copytree(entry, staging / entry.name, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(staging / entry.name))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _swap(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    if _exchange(staging, out_dir):
        shutil.rmtree(staging, ignore_errors=True)  # it holds the old DIR now
        return
    old = _new_dir(out_dir.parent, f".{out_dir.name}.staging-old-")
    os.rename(out_dir, old / "dir")
    try:
        os.rename(staging, out_dir)
    except OSError:
        os.rename(old / "dir", out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def out_of_resources(err: BaseException) -> bool:
    """Whether `err` is the machine running out of disk space or memory (also as a runtime's own
    message: TVM's linker, torch's zip writer), not a bug or a bad input."""
    if isinstance(err, MemoryError):
        return True
    if isinstance(err, OSError) and err.errno in _SPACE | {errno.ENOMEM}:
        return True
    return any(words in str(err) for words in _SPACE_WORDS)


def explain(err: BaseException, out_dir: Path, written: Path | None = None) -> Exception:
    """One line for an OS error met while writing `out_dir`: `OutOfResources` (exit 1) for disk
    space and memory, `UserError` (exit 2) for a bad place; anything else is returned as it is."""
    path = Path(getattr(err, "filename", None) or out_dir)
    if path.name.startswith(f".{out_dir.name}.") and path.parent == out_dir.parent:  # our lock or staging
        path = out_dir
    if isinstance(err, MemoryError) or getattr(err, "errno", None) == errno.ENOMEM:
        return OutOfResources(f"out of memory while writing {out_dir}: nothing was changed there")
    if out_of_resources(err):
        where = next((p for p in (path, *path.parents) if p.exists()), out_dir.parent)
        free = shutil.disk_usage(where).free
        if written is None:
            return OutOfResources(f"{path}: no space left on device ({_mib(free)} free there)")
        done = _tree_bytes(written)
        return OutOfResources(f"{path}: no space left on device: the compile needs more than the "
                              f"{_mib(free + done)} free there (it ran out after writing {_mib(done)}); "
                              + (f"{out_dir} was left as it was" if out_dir.exists() else "nothing was left there"))
    code = getattr(err, "errno", None)
    if code == errno.EROFS:
        return UserError(f"cannot write {path}: it is on a read-only file system")
    if code in (errno.EACCES, errno.EPERM):
        return UserError(f"cannot write {path}: permission denied")
    if code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return UserError(f"cannot write {path}: a file stands where a directory should be")
    return err if isinstance(err, Exception) else RuntimeError(str(err))


def _tree_bytes(directory: Path | None) -> int:
    if directory is None or not directory.is_dir():
        return 0
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file() and not f.is_symlink())


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
