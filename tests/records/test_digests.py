"""records.digests: every file's SHA-256 and size, and the one line naming the first that differs."""
from __future__ import annotations

import pytest

from rnnc.errors import ArtifactChanged
from rnnc.records.digests import check_files, digest_dir
from rnnc.records.manifest import read_manifest
from tests.records.test_manifest import V1_DIR


@pytest.fixture
def dir_and_manifest(tmp_path):
    (tmp_path / "tvm").mkdir()
    (tmp_path / "tvm" / "model.so").write_bytes(b"\x7fELF" + bytes(100))
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "manifest.json").write_text("{}")
    manifest = read_manifest(V1_DIR).model_copy(update={"files": digest_dir(tmp_path)})
    return tmp_path, manifest


def test_every_file_but_the_manifest_is_recorded(dir_and_manifest) -> None:
    d, manifest = dir_and_manifest
    assert sorted(manifest.files) == ["model.onnx", "tvm/model.so"]
    assert manifest.files["tvm/model.so"].bytes == 104
    check_files(d, manifest, ["tvm", "model.onnx"])  # a directory artifact covers the files under it


@pytest.mark.parametrize("change, words", [
    (lambda p: p.write_bytes(p.read_bytes()[:10]), "10 bytes where compile wrote 104"),
    (lambda p: p.write_bytes(bytes(104)), "changed since compile"),
    (lambda p: p.unlink(), "missing"),
])
def test_a_changed_file_is_named(dir_and_manifest, change, words) -> None:
    d, manifest = dir_and_manifest
    change(d / "tvm" / "model.so")
    with pytest.raises(ArtifactChanged, match=words) as err:
        check_files(d, manifest, ["tvm/model.so"])
    assert str(d / "tvm" / "model.so") in str(err.value)
    check_files(d, manifest, ["model.onnx"])  # the others are not held against it


def test_an_unrecorded_artifact_is_refused_and_an_old_dir_is_not_checked(dir_and_manifest) -> None:
    d, manifest = dir_and_manifest
    with pytest.raises(ArtifactChanged, match="no digest recorded"):
        check_files(d, manifest, ["model.ts"])
    check_files(d, manifest.model_copy(update={"files": None}), ["model.ts"])  # format < 3: nothing recorded
