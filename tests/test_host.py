"""Machine classes (`rnnc.host.MachineClass`): what a fleet node's labels say it is, and `--on`."""
from __future__ import annotations

import re

from rnnc import host

EPYC = host.MachineClass.of("AMD EPYC 7763 64-Core Processor", ["avx2", "fma"], "NVIDIA H100 80GB HBM3")
XEON = host.MachineClass.of("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                            ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"], None)


def test_a_class_is_made_of_label_safe_values_and_round_trips_through_its_labels():
    assert XEON.cpu == "Intel-Xeon-Platinum-8481C-CPU-2.70GHz" and XEON.isa == "avx2-avx512-vnni-bf16-amx"
    assert XEON.gpu == "none" and XEON.name == "Intel-Xeon-Platinum-8481C-CPU-2.70GHz_avx2-avx512-vnni-bf16-amx"
    assert EPYC.name.endswith("_avx2_NVIDIA-H100-80GB-HBM3")
    for machine in (XEON, EPYC, host.machine_class(), host.machine_class("pool a")):
        labels = machine.labels()
        assert all(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?", v) for v in labels.values())
        assert host.MachineClass.from_labels(labels) == machine
    assert host.machine_class("pool a").name == "pool-a"
    assert host.MachineClass.from_labels({"rnnc.cpu": "x"}) is None  # a node rnnc did not label


def test_a_long_name_keeps_its_start_and_a_hash_of_the_whole():
    one, two = host.label_value("x" * 80 + "1"), host.label_value("x" * 80 + "2")
    assert len(one) == 63 and one.startswith("x" * 50) and one != two


def test_on_patterns_match_as_labels_are_spelled_and_without_a_wildcard_anywhere():
    assert EPYC.matches({"cpu": ["*EPYC*"], "gpu": ["H100"]})  # every key must match
    assert not XEON.matches({"cpu": ["*EPYC*"], "gpu": ["H100"]})
    assert XEON.matches({"cpu": ["*EPYC*", "*xeon*"]})  # a key given twice: either pattern
    assert XEON.matches({"cpu": ["Xeon(R) Platinum"]}) and XEON.matches({"isa": ["amx"], "gpu": ["none"]})
    assert not EPYC.matches({"isa": ["avx512"]}) and EPYC.matches({"class": ["*H100*"]})
    assert not XEON.matches({"cpu": ["Xeon"], "isa": ["sve"]})
