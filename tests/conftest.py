"""Shared test helpers: small specs written to files, and the CLI run in-process."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import os

import pytest
import yaml
from hypothesis import HealthCheck, settings

from rnnc.cli import main

# Hypothesis profiles (tests/test_properties.py): "ci", the default, sized for the suite's time
# budget; "nightly" ten times the examples. `RNNC_HYPOTHESIS=nightly pytest tests/test_properties.py`.
# No example database, so that every run draws afresh and runs stay independent of each other.
_PROFILE = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=100, **_PROFILE)
settings.register_profile("nightly", max_examples=1000, **_PROFILE)
settings.load_profile(os.environ.get("RNNC_HYPOTHESIS", "ci"))


@pytest.fixture(autouse=True)
def _no_cache_from_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI keeps TVM tuning records under $XDG_CACHE_HOME: in tests, a fresh empty one, so that
    no record of the developer's machine decides what a test builds."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


def make_spec(**overrides: Any) -> dict[str, Any]:
    """A small valid spec; nested keys given as `rnn={...}` replace whole sections."""
    spec = {
        "name": "t",
        "input": {"type": "features", "features": 5},
        "rnn": {"cell": "lstm", "hidden_size": 8},
        "output": {"mode": "many_to_many"},
        "shapes": {"batch_sizes": [2], "seq_lens": [3]},
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def write_spec(tmp_path: Path):
    def write(data: Any, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
        return path

    return write


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `rnnc ARGS` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def ray_fleet():
    """A real Ray cluster on this machine for the fleet tests (`rnnc bench --cluster`), one per test
    process: a head with no bench slot and two bench nodes of classes `a` and `b` (raylets of
    this host, one CPU and one bench slot each, labelled as `rnnc node` labels them). Tests that
    kill nodes add their own. Its processes end with the session. Tests using it belong to the
    xdist group "ray", so that one process runs them all, one at a time."""
    pytest.importorskip("ray", reason="the fleet tests need Ray: pip install -e '.[cluster]'")
    from ray.cluster_utils import Cluster

    # a lost node is declared dead after 1 s of failed health checks, not Ray's default 15 s or more
    health = {"health_check_period_ms": 500, "health_check_failure_threshold": 2, "health_check_timeout_ms": 500}
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, include_dashboard=False,
                                                                _system_config=health))
    fleet = RayFleet(cluster, {})
    try:
        for name, machine in (("a1", "a"), ("b1", "b")):
            fleet.add(name, machine)
        yield fleet
    finally:
        cluster.shutdown()


class RayFleet:
    """The test cluster: its address, and bench nodes added and killed by name."""

    def __init__(self, cluster: Any, nodes: dict[str, Any]) -> None:
        self.cluster, self.nodes = cluster, nodes
        self.address = cluster.address

    def add(self, name: str, machine: str) -> None:
        from rnnc import host
        from rnnc.bench.cluster import NODE_LABEL, SLOT

        labels = host.machine_class(machine).labels() | {NODE_LABEL: name}
        self.nodes[name] = self.cluster.add_node(num_cpus=1, resources={SLOT: 1}, labels=labels)

    def kill(self, name: str) -> None:
        """The node's raylet and workers killed outright, as a lost machine."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)
