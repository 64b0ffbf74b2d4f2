"""Options of the pytest-benchmark suite (`pytest bench/ --benchmark-only`)."""
from __future__ import annotations


def pytest_addoption(parser):
    group = parser.getgroup("rnnc suite")
    group.addoption("--suite-shapes", default="first", choices=["first", "all"],
                    help="first: each spec's smallest batch size and sequence length (default); all: every pair")
    group.addoption("--suite-backends", default="all", help="comma list of rnnc backends, or all (default)")
    group.addoption("--suite-specs", default=None, help="comma list of spec names (default: every spec)")
    group.addoption("--suite-threads", default="1",
                    help="threads per runtime, or default for each runtime's own (default 1, as rnnc bench --threads 1)")
