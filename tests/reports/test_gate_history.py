"""`rnnc gate REPORT --history HISTORY`: each row against the noise its own history has shown."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rnnc import history
from rnnc.errors import UserError
from rnnc.reports import gate
from tests.reports.synth import report, row


def run(scale: dict[str, float], seed: int, drift: float = 0.0) -> dict:
    """One run: onnxruntime's median moves ~2% between runs, torch's ~10% (as measured here)."""
    rng = np.random.default_rng(seed)
    moves = {"torch": float(np.exp(rng.normal(0, 0.10))), "onnxruntime": float(np.exp(rng.normal(0, 0.02)))}
    return report([row(b, 1, 8, base * moves[b] * scale.get(b, 1.0) * (1 + drift), seed=seed)
                   for b, base in (("torch", 1.0), ("onnxruntime", 0.4))])


@pytest.fixture
def past(tmp_path):
    path = str(tmp_path / "h.sqlite")
    for seed in range(15):
        history.append(path, run({}, seed))
    return path


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_a_rerun_passes_and_a_slowdown_past_the_rows_noise_fails(past, tmp_path):
    code, table = gate(write(tmp_path, "same.json", run({}, 99)), None, 0.10, history=past)
    assert code == 0 and table.startswith("gate mode: history") and "band of 15 runs" in table
    code, table = gate(write(tmp_path, "slow.json", run({"onnxruntime": 1.3}, 98)), None, 0.10, history=past)
    assert code == 1 and [line.split()[1] for line in table.splitlines() if " FAIL " in line] == ["onnxruntime"]
    # every backend 30% slower: seen where the history is tight (onnxruntime), not where it is loose
    code, table = gate(write(tmp_path, "all.json", run({}, 97, drift=0.3)), None, 0.10, history=past)
    assert code == 1 and "onnxruntime" in table.splitlines()[-1]


def test_too_little_history_never_fails(tmp_path):
    path = str(tmp_path / "h.sqlite")
    for seed in range(3):
        history.append(path, run({}, seed))
    code, table = gate(write(tmp_path, "slow.json", run({"onnxruntime": 2.0}, 9)), None, 0.10, history=path)
    assert code == 0 and "too few to know its noise" in table


def test_uncomparable_history_is_exit_2(past, tmp_path):
    cuda = run({}, 5)
    cuda["target"] = "cuda"
    with pytest.raises(UserError, match="no run of target cuda"):
        gate(write(tmp_path, "cuda.json", cuda), None, 0.10, history=past)
    with pytest.raises(UserError, match="alternatives"):
        gate(write(tmp_path, "x.json", run({}, 5)), write(tmp_path, "y.json", run({}, 6)), 0.10, history=past)


def test_bad_histories_are_one_line_and_exit_2(past, tmp_path, cli):
    import socket
    import time

    new = write(tmp_path, "new.json", run({}, 99))
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"\x00not a database at all" * 100)
    code, out, err = cli("gate", new, "--history", corrupt)
    assert code == 2 and err.count("\n") == 1 and "not an SQLite database" in err
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    code, out, err = cli("gate", new, "--history", f"postgresql://rnnc@127.0.0.1:{port}/h")
    assert code == 2 and err.count("\n") == 1 and "cannot connect" in err and time.perf_counter() - started < 5
    other = run({}, 7)
    for r in other["rows"]:
        r["model"] = "another"
    other["models"] = {"another": other["models"]["m"]}
    code, out, err = cli("gate", write(tmp_path, "other.json", other), "--history", past)
    assert code == 2 and err.count("\n") == 1 and "nothing to compare" in err
    code, out, err = cli("gate", new, "--history", past, "--baseline", new)
    assert code == 2 and "alternatives" in err


def test_bench_refuses_an_unreachable_history_before_the_sweep(write_spec, tmp_path, cli):
    from tests.conftest import make_spec

    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"garbage" * 1000)
    code, out, err = cli("bench", write_spec(make_spec()), "--backends", "torch", "--history", corrupt,
                         "--out", tmp_path / "b")
    assert code == 2 and "not an SQLite database" in err and not (tmp_path / "b").exists()


def test_a_server_that_never_answers_is_refused_within_seconds(tmp_path, cli):
    import socket
    import time

    with socket.socket() as silent:  # accepts the TCP connection (the kernel does), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        started = time.perf_counter()
        code, out, err = cli("gate", write(tmp_path, "new.json", run({}, 1)), "--history",
                             f"postgresql://rnnc@127.0.0.1:{silent.getsockname()[1]}/h")
    assert code == 2 and err.count("\n") == 1 and "timeout" in err and time.perf_counter() - started < 8


def test_the_report_already_appended_is_not_part_of_its_own_band(past, tmp_path):
    slow = run({"onnxruntime": 1.3}, 98)
    history.append(past, slow)  # as `rnnc bench --history` does before `rnnc gate --history`
    code, table = gate(write(tmp_path, "slow.json", slow), None, 0.10, history=past)
    assert code == 1 and "band of 15 runs" in table


def test_stream_rows_have_a_history_of_their_own(tmp_path):
    """A history of plain runs and streamed runs of the same shapes: a streamed row, three times
    a plain call's time, is judged against the streamed runs only."""
    from tests.reports.synth import stream_row

    def streamed_run(seed: int, scale: float = 1.0) -> dict:
        rng = np.random.default_rng(seed)
        r = report([stream_row(b, 1, 8, 3 * base * float(np.exp(rng.normal(0, 0.02))) * scale, seed=seed)
                    for b, base in (("torch", 1.0), ("onnxruntime", 0.4))])
        r["settings"]["stream"] = True
        return r

    path = str(tmp_path / "h.sqlite")
    for seed in range(12):
        history.append(path, run({}, seed))
        history.append(path, streamed_run(seed))
    keys = history.keys(history.load(path))
    assert ("m", "onnxruntime", 1, 8) in keys and ("m", "onnxruntime", 1, 8, "stream") in keys
    code, table = gate(write(tmp_path, "s.json", streamed_run(99)), None, 0.10, history=path)
    assert code == 0 and table.count("band of 12 runs") == 2 and "onnxruntime (stream)" in table, table
    assert gate(write(tmp_path, "slow.json", streamed_run(98, 1.5)), None, 0.10, history=path)[0] == 1


def test_a_fleet_row_is_judged_against_its_own_machine_class_only(tmp_path):
    """Rows of two machine classes share a history; each is judged by its own class's runs: class
    a at what class b runs at is a regression, though the two histories together would hide it."""
    def fleet_run(centers: dict[str, float], seed: int) -> dict:
        rng = np.random.default_rng(seed)
        data = report([dict(row("onnxruntime", 1, 8, center * float(np.exp(rng.normal(0, 0.02))), seed=seed),
                            machine=machine, node=f"{machine}1") for machine, center in centers.items()])
        data["settings"]["threads"] = "all"  # each node's every core, as a fleet records it
        return data

    path = str(tmp_path / "h.sqlite")
    for seed in range(12):
        history.append(path, fleet_run({"a": 1.0, "b": 2.0}, seed))
    runs = history.load(path)
    assert runs[0].threads == "all" and {r.key[-1] for r in runs[0].rows} == {"@a", "@b"}
    code, table = gate(write(tmp_path, "same.json", fleet_run({"a": 1.0, "b": 2.0}, 99)), None, 0.10, history=path)
    assert code == 0, table
    code, table = gate(write(tmp_path, "slow.json", fleet_run({"a": 2.0, "b": 2.0}, 98)), None, 0.10, history=path)
    failed = [line for line in table.splitlines() if " FAIL " in f" {line} "]
    assert code == 1 and len(failed) == 1 and "onnxruntime @a" in failed[0], table
