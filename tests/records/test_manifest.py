"""manifest.json: frozen records, validated when built, older formats mapped forward on load."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from rnnc import api
from rnnc.errors import UserError
from rnnc.pipeline import exit_code
from rnnc.records.manifest import FORMAT, BackendRecord, read_manifest, write_manifest

V1_DIR = Path(__file__).resolve().parent.parent / "data" / "v1" / "tiny-gru-cpu"  # by the first landing


def test_a_format_1_manifest_loads_upgraded():
    manifest = read_manifest(V1_DIR)
    assert json.loads((V1_DIR / "manifest.json").read_text())["format"] == 1
    assert manifest.format == FORMAT == 3
    assert manifest.files is None  # no digests recorded before format 3: loaded as it is
    assert set(manifest.backends) == {"torch", "torchscript", "onnxruntime", "tvm"}
    assert {b.precision for b in manifest.backends.values()} == {"fp32"}
    assert manifest.io.inputs[0].name == "tokens" and manifest.io.inputs[0].high == 50


def test_a_dir_compiled_by_the_first_landing_still_verifies(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(V1_DIR, old)
    manifest = api.verify(old, backends=["torch", "torchscript", "onnxruntime"])
    assert exit_code(manifest) == 0, {n: b.reason for n, b in manifest.backends.items()}
    assert json.loads((old / "manifest.json").read_text())["format"] == 1  # verify reads, never rewrites


def test_records_are_frozen_and_validated():
    record = BackendRecord(status="ok", artifacts=("model.onnx",))
    with pytest.raises(ValidationError):
        record.status = "failed"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        BackendRecord(status="fine")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        BackendRecord(status="ok", unknown=1)  # type: ignore[call-arg]
    assert record.but(status="failed", reason="x").status == "failed" and record.status == "ok"


def test_a_written_manifest_reads_back_equal(tmp_path):
    manifest = read_manifest(V1_DIR)
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary left behind


@pytest.mark.parametrize("text, message", [
    ("{", "not valid JSON"),
    ("[]", "not an rnnc manifest"),
    ('{"format": 99, "source": {}}', "format 99 is newer"),
    ('{"format": 2, "source": {}, "name": "x"}', "not a valid rnnc manifest"),
])
def test_bad_manifests_are_one_line(tmp_path, text, message):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(UserError, match=message) as err:
        read_manifest(tmp_path)
    assert len(err.value.problems) == 1 and "\n" not in err.value.problems[0]
