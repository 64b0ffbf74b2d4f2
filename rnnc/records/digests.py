"""A compiled DIR's files against what compile wrote: SHA-256 and size, checked before loading.

A DIR holds native code (TVM's model.so) that rnnc loads into its own process, and files that
runtimes parse in C++ (model.onnx, model.ts, OpenVINO's IR). A copy cut short, a file zeroed by a
crash, or the library of another model put in its place would otherwise crash the process
(SIGBUS on a truncated .so) or run the wrong code before any check of its outputs. So compile
records every file's digest in manifest.json (`files`), and every command that loads from DIR
first checks the files it is about to load. This guards against accidents, not against an
attacker, who can rewrite manifest.json as well: a DIR is to be run only when it comes from
someone you trust (README).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from rnnc.errors import ArtifactChanged
from rnnc.records.manifest import MANIFEST, FileDigest, Manifest

__all__ = ["check_files", "digest_dir", "sha256"]
_CHUNK = 1 << 20


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def digest_dir(directory: Path) -> dict[str, FileDigest]:
    """Every regular file under `directory` but the manifest itself, by its path relative to it."""
    directory = Path(directory)
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != MANIFEST:
            found[path.relative_to(directory).as_posix()] = FileDigest(sha256=sha256(path),
                                                                       bytes=path.stat().st_size)
    return found


def check_files(directory: Path, manifest: Manifest, paths: Iterable[str]) -> None:
    """`ArtifactChanged`, naming the first file that differs, unless every file at or under
    `paths` (relative to DIR) is as compile wrote it. A DIR compiled before digests were recorded
    (`files` is None) is not checked."""
    if manifest.files is None:
        return
    directory = Path(directory)
    for rel in paths:
        recorded = {p: d for p, d in manifest.files.items() if p == rel or p.startswith(rel.rstrip("/") + "/")}
        if not recorded:
            raise ArtifactChanged(f"{directory / rel}: no digest recorded in {MANIFEST}: refusing to load it "
                                  f"(recompile {directory})")
        for path, want in recorded.items():
            _check_one(directory / path, want, directory)


def _check_one(path: Path, want: FileDigest, directory: Path) -> None:
    again = f"refusing to load it (recompile {directory}, or copy it again)"
    if not path.is_file():
        raise ArtifactChanged(f"{path}: missing, {again}")
    size = path.stat().st_size
    if size != want.bytes:
        raise ArtifactChanged(f"{path}: {size} bytes where compile wrote {want.bytes} (truncated or changed), {again}")
    if sha256(path) != want.sha256:
        raise ArtifactChanged(f"{path}: changed since compile (its SHA-256 is not the one in {MANIFEST}), {again}")
