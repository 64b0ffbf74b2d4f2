"""`rnnc history`: a 30-run history with a 20% step at run #15 on one backend, rendered as a
table (with the commit range of the step) and a plot, through the API and the CLI."""
from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from rnnc import api, history
from rnnc.reports import trend
from tests.reports.synth import standard

T0 = datetime(2024, 3, 1, 9, 30, tzinfo=timezone.utc)


def build(path: str, runs: int = 30, step_at: int = 15, seed: int = 0) -> None:
    """Runs 1..`runs`; from run `step_at` on, onnxruntime is 20% slower. Each run moves every row of
    a backend by the same few percent (a shared machine's run-to-run drift)."""
    rng = np.random.default_rng(seed)
    for i in range(1, runs + 1):
        scale = {b: float(np.exp(rng.normal(0, 0.03))) for b in ("torch", "onnxruntime")}
        if i >= step_at:
            scale["onnxruntime"] *= 1.2
        r = standard(scale, seed=i)
        r["environment"]["git"] = f"c{i:03d}"
        assert history.append(path, r, recorded_at=T0 + timedelta(days=i - 1)) == i


@pytest.fixture(scope="module")
def stepped(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("trend") / "history.db"
    build(str(path))
    return str(path)


def test_the_step_is_named_with_its_run_and_commit_range(stepped):
    runs = history.load(stepped)
    found = trend.trends(runs)
    assert len(found) == 8 and all(len(t.points) == 30 for t in found)
    stepped_rows = {t.key: [trend.describe_step(t, s) for s in t.steps] for t in found if t.steps}
    assert sorted(stepped_rows) == sorted(t.key for t in found if t.key[1] == "onnxruntime")
    for described in stepped_rows.values():
        assert len(described) == 1 and described[0].startswith("run #15 +") and "(c014..c015)" in described[0]
        change = float(described[0].split()[2].rstrip("%")) / 100
        assert change == pytest.approx(0.2, abs=0.04)
    text = trend.table(found)
    lines = text.splitlines()
    assert lines[0].split() == ["model", "backend", "batch", "seq", "precision", "runs", "first", "ms", "last", "ms",
                                "change", "steps"]
    assert sum("run #15" in line for line in lines) == 4
    assert all(line.rstrip().endswith("-") for line in lines[2:] if " torch " in line)
    assert trend.summary(runs, found) == "30 runs from 2024-03-01 to 2024-03-30, 8 rows, 4 steps"


def test_the_plot_is_written_and_readable(stepped, tmp_path):
    import matplotlib.image

    text, written = api.history(stepped, out_dir=tmp_path)
    assert written == [tmp_path / "history.png"] and "run #15" in text and text.endswith("4 steps")
    image = matplotlib.image.imread(written[0])
    height, width = image.shape[:2]
    assert 950 <= width <= 1150 and 700 <= height <= 900  # 2 x 2 panels of 5.2 x 3.6 in, one per shape


def test_default_out_dir_beside_the_file_or_here_for_a_url(tmp_path, monkeypatch):
    path = tmp_path / "h" / "history.db"
    build(str(path), runs=8, step_at=5)
    _, written = api.history(str(path), model="m")
    assert written == [path.parent / "history-m.png"]
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    text, written = api.history(f"sqlite:///{path}")
    assert [p.resolve() for p in written] == [here / "history.png"]
    assert text.endswith("8 runs from 2024-03-01 to 2024-03-08, 8 rows, 4 steps")


def test_empty_history_is_one_line(tmp_path):
    path = tmp_path / "h.db"
    build(str(path), runs=1)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM rnnc_rows")
        db.execute("DELETE FROM rnnc_runs")
    text, written = api.history(str(path), out_dir=tmp_path)
    assert written == [] and text == f"{path}: no runs recorded yet (`rnnc bench ... --history` appends one)"


def test_cli_history(cli, stepped, tmp_path):
    code, out, err = cli("history", stepped, "--out", tmp_path)
    assert code == 0 and err == ""
    assert "run #15 +" in out and "(c014..c015)" in out and f"wrote {tmp_path / 'history.png'}" in out
    code, out, _ = cli("history", stepped, "--model", "m", "--out", tmp_path)
    assert code == 0 and "history-m.png" in out
    code, _, err = cli("history", stepped, "--model", "nope")
    assert code == 2 and err.count("\n") == 1 and "no run of model 'nope'" in err
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database at all" * 10)
    code, out, err = cli("history", corrupt)
    assert code == 2 and out == "" and err == f"error: {corrupt}: not an SQLite database (file is not a database)\n"
    code, _, err = cli("history", tmp_path / "missing.db")
    assert code == 2 and err.startswith("error: no history at")
