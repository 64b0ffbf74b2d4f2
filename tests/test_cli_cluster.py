"""`rnnc bench --cluster` and `rnnc node` from the command line: what a user sees when the
cluster is not there, Ray is missing or `--on` matches nothing (one line, exit 2), Ctrl-C and
`--resume`, and `--cluster local` giving the rows a plain bench gives."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from rnnc.bench import cluster, run_bench
from rnnc.errors import UserError
from rnnc.records import report as schema
from tests.bench.test_sweep import QUICK
from tests.conftest import make_spec

SPEC = make_spec(shapes={"batch_sizes": [1], "seq_lens": [2]})


def need_ray():
    return pytest.importorskip("ray", reason="the cluster tests need Ray: pip install -e '.[cluster]'")


def rnnc(*args: object, **kw: object) -> subprocess.Popen:
    """`rnnc ARGS` as a user at a terminal runs it: with Ctrl-C's default action, even where this
    test run inherited SIGINT ignored (a shell's `&` job), which rnnc would rightly keep ignoring."""
    return subprocess.Popen([sys.executable, "-m", "rnnc", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


def test_without_ray_the_flag_says_how_to_install_it(cli, write_spec, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is not installed
    code, out, err = cli("bench", write_spec(SPEC), "--cluster", "local")
    assert code == 2 and out == ""
    assert err == "error: --cluster needs Ray, an optional extra that is not installed: pip install " \
                  "'rnnc[cluster]' (from a checkout: pip install -e '.[cluster]')\n"


def test_an_address_that_does_not_answer_is_one_line_within_seconds(cli, write_spec, tmp_path):
    ray = need_ray()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        started = time.monotonic()
        code, out, err = cli("bench", write_spec(SPEC), "--cluster", address, "--out", tmp_path / "out")
        assert code == 2 and len(err.splitlines()) == 1 and f"--cluster {address}: nothing answers " in err, err
        # the address as given, and where Ray took it, when that is elsewhere (a loopback is this node's IP)
        assert "nothing answers there" in err or "the address Ray resolves it to" in err, err
        assert time.monotonic() - started < 15 and not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="expected local, auto, HOST:PORT"):
        cluster.probe("nohost", ray)


def test_a_grpc_server_that_is_not_ray_is_refused_by_the_probe():
    """As a proxy that answers every address (HTTP/2 404) is: Ray's connect would retry for 20 s."""
    ray = need_ray()
    import grpc
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # no service: every method unimplemented
    port = server.add_insecure_port("0.0.0.0:0")  # Ray reads a loopback address as this node's IP
    server.start()
    try:
        for address, what in ((f"ray://127.0.0.1:{port}", "Ray Client server"), (f"127.0.0.1:{port}", "Ray cluster")):
            started = time.monotonic()
            with pytest.raises(UserError, match=f"a server answers .*, but it is not a {what}"):
                cluster.probe(address, ray, wait_s=2.0)
            assert time.monotonic() - started < 5
    finally:
        server.stop(None)


def test_a_port_that_accepts_but_is_no_ray_is_refused_after_the_probe(tmp_path):
    ray = need_ray()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:  # accepts, says nothing: a silent server
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(UserError, match="a server answers there, but no Ray cluster within 1 s"):
            cluster.probe(f"ray://127.0.0.1:{listener.getsockname()[1]}", ray, wait_s=1.0)
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        thread.join()
        for s in accepted + [listener]:
            s.close()


def test_on_needs_a_cluster_and_a_key_it_knows(cli, write_spec):
    code, _, err = cli("bench", write_spec(SPEC), "--on", "cpu=*EPYC*")
    assert code == 2 and err == "error: --on picks machine classes of a cluster: give --cluster ADDRESS too\n"
    code, _, err = cli("bench", write_spec(SPEC), "--cluster", "auto", "--on", "arch=x86")
    assert code == 2 and "--on arch=x86: expected key=pattern,... with keys cpu, isa, gpu, class" in err


def test_node_prints_the_ray_start_command_with_slot_and_labels(cli):
    code, out, _ = cli("node", "--address", "10.0.0.1:6379", "--class", "skylake", "--name", "w1", "--print",
                       "--", "--num-cpus", "8")
    assert code == 0
    assert out.startswith("RAY_worker_niceness=0 ray start --address 10.0.0.1:6379 --resources "
                          "'{\"rnnc_bench_slot\": 1}' --labels ")
    assert "rnnc.class=skylake,rnnc.cpu=" in out and ",rnnc.node=w1 --num-cpus 8" in out
    code, _, err = cli("node", "--address", "10.0.0.1:6379", "--slots", "0")
    assert code == 2 and "--slots: must be >= 1, got 0" in err
    code, out, _ = cli("node", "--head", "--slots", "0", "--print")  # a head that only coordinates
    assert code == 0 and "ray start --head --resources '{\"rnnc_bench_slot\": 0}'" in out
    code, _, err = cli("node", "--head", "--slots", "-1")
    assert code == 2 and "--slots: must be >= 0, got -1" in err


def test_node_says_in_one_line_why_ray_start_failed(write_spec):
    need_ray()
    proc = rnnc("node", "--address", "127.0.0.1:1", "--", "--no-such-flag")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out.startswith("RAY_worker_niceness=0 ray start --address 127.0.0.1:1 "), out
    assert err.strip().splitlines() == ["error: ray start: Error: No such option '--no-such-flag'."], err
    assert "RAY_AUTH_MODE=token" in cluster.start_failure(AUTH_FAILURE)  # what Ray 2.60 wrote here, cut short


def test_ray_starts_progress_is_shown_and_its_failure_kept_for_one_line():
    said = cluster.StartOutput()
    lines = ["Local node IP: 192.0.2.2\n", AUTH_FAILURE.splitlines()[0] + "\n", "Traceback (most recent call last):\n",
             '  File "ray/scripts.py", line 1\n', "ConnectionError: could not reach the GCS\n"]
    assert [said.shown(line) for line in lines] == [True, False, False, False, False]
    assert said.failure() == "the cluster wants Ray's auth token and this node sent none: run it with " \
                             "RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN"
    said = cluster.StartOutput()
    assert [said.shown(line) for line in (lines[0], *lines[2:])] == [True, False, False, False]
    assert said.failure() == "ConnectionError: could not reach the GCS"


AUTH_FAILURE = """\
[2026-12-07 17:30:28,291 W 25582 25582] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: \
RPC error: InvalidAuthToken: Authentication token is missing or incorrect
Traceback (most recent call last):
  File "python/ray/includes/common.pxi", line 119, in ray._raylet.check_status
ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing or incorrect.
"""


@pytest.mark.xdist_group("ray")
def test_on_matching_no_class_lists_the_classes_the_cluster_has(cli, ray_fleet, write_spec):
    code, out, err = cli("bench", write_spec(SPEC), "--cluster", ray_fleet.address, "--on", "gpu=H100")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("error: --on gpu=H100: no machine class of the cluster matches; it has: a (cpu=")


@pytest.mark.xdist_group("ray")
def test_ctrl_c_keeps_the_rows_done_and_resume_completes_them(ray_fleet, write_spec, tmp_path):
    spec, out = write_spec(make_spec()), tmp_path / "out"
    args = ("bench", spec, "--backends", "torch,onnxruntime", "--cluster", ray_fleet.address, "--on", "class=a",
            "--out", out, "--seq-lens", "2,3", "--batch-sizes", "1")
    proc = rnnc(*args)
    rows: list = []
    while proc.poll() is None and not rows:
        time.sleep(0.05)
        try:
            rows = json.loads((out / "report.json").read_text())["rows"]
        except (OSError, ValueError, KeyError):
            pass
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.rstrip().endswith("interrupted"), err
    partial = schema.load_report(out / "report.json")
    assert not partial["finished"] and 0 < len(partial["rows"]) < 4
    built = (out / "a" / "t" / "manifest.json").stat().st_mtime_ns
    proc = rnnc(*args, "--resume")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    done = schema.load_report(out / "report.json")
    assert done["finished"] and len(done["rows"]) == 4
    kept = {schema.row_key(r): r for r in done["rows"]}
    assert all(kept[schema.row_key(r)] == r for r in partial["rows"])  # kept as they were
    [job] = [j for j in done["cluster"]["jobs"] if j["outcome"] == "done"]
    assert job["rows"] == 4 - len(partial["rows"])  # only the rows missing were measured
    assert (out / "a" / "t" / "manifest.json").stat().st_mtime_ns == built  # shipped, not compiled again


@pytest.mark.xdist_group("ray")
def test_cluster_local_gives_the_rows_a_plain_bench_gives(write_spec, tmp_path):
    need_ray()
    spec = write_spec(SPEC)
    plain = run_bench(spec, "cpu", ["torch", "onnxruntime"], out_dir=tmp_path / "plain", settings=QUICK)
    proc = rnnc("bench", spec, "--backends", "torch,onnxruntime", "--cluster", "local", "--out", tmp_path / "local")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    local = schema.load_report(tmp_path / "local" / "report.json")
    [machine] = {r["machine"] for r in local["rows"]}
    assert [schema.row_key(r)[:4] for r in local["rows"]] == [schema.row_key(r) for r in plain["rows"]]
    assert all(r["status"] == "ok" and r["node"] for r in local["rows"]) and f"### t on {machine}" in \
        (tmp_path / "local" / "report.md").read_text()
    assert local["models"]["t"]["fingerprint"] == plain["models"]["t"]["fingerprint"]
