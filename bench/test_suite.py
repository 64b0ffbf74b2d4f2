"""The workload suite under pytest-benchmark: `pytest bench/ --benchmark-only`.

Each spec of `bench/suite/` is compiled once (into a temporary DIR) and each backend timed
through the same runner `rnnc bench` uses (`runner.bind(**inputs)` on the same seeded inputs).
Every benchmark carries its row key in `extra_info`, so `rnnc gate` reads the JSON that
`--benchmark-json=FILE` writes (which keeps every timing) as it reads its own reports; the
calibration workload runs too, for `rnnc gate --normalize`.

    pytest bench/ --benchmark-only --benchmark-json=bench.json
    rnnc gate bench.json --baseline baselines/pytest-benchmark.json --max-regression 10%
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rnnc import targets
from rnnc.bench import measure
from rnnc.bench.sweep import fingerprint
from rnnc.pipeline import compile_model
from rnnc.graphs import load_model, load_spec

SUITE = Path(__file__).parent / "suite"


def _threads(config: pytest.Config) -> int | None:
    value = config.getoption("--suite-threads")
    return None if value == "default" else int(value)


def _cases(config: pytest.Config) -> list[tuple[Path, str, int, int]]:
    wanted = config.getoption("--suite-specs")
    wanted = set(wanted.split(",")) if wanted else None
    backends = targets.parse_backends(config.getoption("--suite-backends"))
    cases = []
    for path in sorted(SUITE.glob("*.yaml")):
        spec = load_spec(path)
        if wanted and spec.name not in wanted:
            continue
        shapes = [(b, s) for b in spec.shapes.batch_sizes for s in spec.shapes.seq_lens]
        if config.getoption("--suite-shapes") == "first":
            shapes = [(min(spec.shapes.batch_sizes), min(spec.shapes.seq_lens))]
        cases += [(path, backend, b, s) for b, s in shapes for backend in backends]
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cases = _cases(metafunc.config)
        ids = [f"{load_spec(p).name}-b{b}-s{s}-{backend}" for p, backend, b, s in cases]
        metafunc.parametrize("case", cases, ids=ids)


@pytest.fixture(scope="session")
def compiled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """compiled(spec path) -> (manifest, model, DIR): each spec built once, for the shapes benched."""
    cache: dict[Path, tuple] = {}
    shapes: dict[Path, list] = {}
    for path, _, b, s in _cases(request.config):
        shapes.setdefault(path, []).append((b, s))
    backends = targets.parse_backends(request.config.getoption("--suite-backends"))

    def get(path: Path):
        if path not in cache:
            model = load_model(path)
            model.shapes = sorted(set(shapes[path]))
            out = tmp_path_factory.mktemp(model.name)
            cache[path] = (compile_model(model, "cpu", backends, out, threads=_threads(request.config)), model, out)
        return cache[path]

    return get


def test_row(benchmark, case, compiled, request) -> None:
    path, backend, batch, seq = case
    manifest, model, out = compiled(path)
    record = manifest.backends[backend]
    if record.status != "ok":
        pytest.skip(f"{backend}: {record.status}: {record.reason}")
    runner = targets.load(backend, out, manifest, "cpu", _threads(request.config))
    inputs = model.random_inputs(batch, seq, np.random.default_rng([0, batch, seq]))  # as `rnnc bench` does
    benchmark.group = model.name
    benchmark.extra_info.update(model=model.name, backend=backend, batch_size=batch, seq_len=seq,
                                fingerprint=fingerprint(model), target="cpu",
                                threads=_threads(request.config))
    benchmark(runner.bind(**inputs))


def test_calibration(benchmark) -> None:
    benchmark.group = "calibration"
    benchmark.extra_info.update(kind="calibration", workload=measure.CALIBRATION)
    benchmark(measure.calibration_call())
