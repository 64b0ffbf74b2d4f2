"""Ray for `rnnc bench --cluster`: connecting to a cluster (or starting one here), and its nodes.

Ray is an optional extra (`pip install 'rnnc[cluster]'`); nothing here imports it before a
fleet sweep asks for it, and its absence is one line naming the extra. A node takes part when it
has a bench slot (the custom resource `rnnc_bench_slot`, one per node: one bench at a time on its
cores) and rnnc's labels (`rnnc.class`, `rnnc.cpu`, `rnnc.isa`, `rnnc.gpu`: `host.MachineClass`),
both set by `rnnc node` (or the `ray start` flags it prints with `--print`).

An address that does not answer is refused within seconds: Ray's own connect waits on a silent
GCS for a minute or more, so the address is first probed for a gRPC server (what both the GCS
and Ray Client's server are) that knows one of Ray's methods, with a short deadline.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from types import ModuleType
from typing import Iterator

from rnnc import host
from rnnc.errors import UserError

SLOT = "rnnc_bench_slot"
NODE_LABEL = f"{host.LABEL}node"
INSTALL = "pip install 'rnnc[cluster]' (from a checkout: pip install -e '.[cluster]')"
PROBE_S = 5.0  # how long an address may take to answer before it is refused
# what the probe asks, with an empty request: a server that does not know the method is not Ray
# (a proxy that answers any address with HTTP/2 404 would keep Ray's own connect retrying for 20 s)
GCS_RPC = "/ray.rpc.NodeInfoGcsService/GetClusterId"
CLIENT_RPC = "/ray.rpc.RayletDriver/ClusterInfo"
# `--cluster local` shares its cores with the bench it runs. Its worker runs at nice 0, as the bench
# would outside Ray (Ray's default of 15 lets every daemon's wakeup preempt a timed call); no worker
# is prestarted (a job takes no CPU, the driver needs none); Ray's periodic timers fire less often
# (measured here: 430 wakeups/s of Ray's processes beside an idle job by default, about 330 with
# these), so that fewer of them preempt samples.
QUIET_LOCAL = {"worker_niceness": 0, "prestart_worker_first_driver": False,
               "raylet_report_resources_period_milliseconds": 1000, "raylet_check_gc_period_milliseconds": 5000,
               "gcs_pull_resource_loads_period_milliseconds": 5000, "report_worker_backlog_interval_ms": 5000,
               "task_events_report_interval_ms": 5000, "metrics_report_interval_ms": 60000,
               "io_context_event_loop_lag_collection_interval_ms": 60000, "io_context_monitor_probe_interval_ms": 60000,
               "object_manager_timer_freq_ms": 1000, "memory_monitor_refresh_ms": 0,
               "local_fs_monitor_interval_ms": 5000, "debug_dump_period_milliseconds": 0,
               "raylet_check_for_unexpected_worker_disconnect_interval_ms": 5000,
               "kill_idle_workers_interval_ms": 5000, "enable_metrics_collection": False, "enable_timeline": False,
               "core_worker_internal_heartbeat_ms": 5000,
               "grpc_client_check_connection_status_interval_milliseconds": 5000}


def import_ray() -> ModuleType:
    """Ray, or a `UserError` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--cluster needs Ray, an optional extra that is not installed: {INSTALL}") from None
    return ray


@dataclass(frozen=True)
class Node:
    """A node that can run bench jobs: Ray's id, the name rows give it, and its class."""

    id: str
    name: str
    machine: host.MachineClass


@contextlib.contextmanager
def connected(address: str) -> Iterator[ModuleType]:
    """Ray, connected to the cluster at `address` for the block and disconnected after it.
    `local` starts a one-node cluster of this machine (one bench slot, this machine's labels)
    and stops it after; `auto`, `HOST:PORT` or `ray://HOST:PORT` join a running one."""
    ray = import_ray()
    quiet = dict(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
    if address == "local":
        labels = host.machine_class().labels() | {NODE_LABEL: host.node_name()}
        ray.init(address="local", num_cpus=0, resources={SLOT: 1}, labels=labels, _system_config=QUIET_LOCAL, **quiet)
    else:
        probe(address, ray)
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise UserError(f"--cluster {address}: cannot connect: {_first_line(err)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def probe(address: str, ray: ModuleType, wait_s: float = PROBE_S) -> None:
    """A `UserError` unless a gRPC server answers at `address` within `wait_s` seconds."""
    target = address.removeprefix("ray://")
    if not address.startswith("ray://"):
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die

            target = canonicalize_bootstrap_address_or_die(address)
        except ConnectionError as err:
            raise UserError(f"--cluster {address}: {_first_line(err)}") from None
        except ValueError:
            target = ""
    where, _, port = target.rpartition(":")
    if not where or not port.isdigit():
        raise UserError(f"--cluster {address}: expected local, auto, HOST:PORT or ray://HOST:PORT")
    # Ray reads a loopback address as this node's own IP (127.0.0.1:1 is 192.0.2.2:1): the line names both
    said = address.removeprefix("ray://")
    where_said = "there" if said == target else f"at {target}, the address Ray resolves it to"
    try:
        socket.create_connection((where.strip("[]"), int(port)), timeout=wait_s).close()
    except OSError as err:
        raise UserError(f"--cluster {address}: nothing answers {where_said} ({err.strerror or err})") from None
    import grpc

    channel = grpc.insecure_channel(target)
    client = address.startswith("ray://")
    try:
        grpc.channel_ready_future(channel).result(timeout=wait_s)
        channel.unary_unary(CLIENT_RPC if client else GCS_RPC)(b"", timeout=wait_s)  # an empty request
    except grpc.FutureTimeoutError:
        raise UserError(f"--cluster {address}: a server answers {where_said}, but no Ray cluster within "
                        f"{wait_s:g} s") from None
    except grpc.RpcError as err:  # any answer but these is Ray's: its connect takes it from here
        code = err.code()
        if code == grpc.StatusCode.UNIMPLEMENTED:
            what = "Ray Client server" if client else "Ray cluster (its GCS)"
            raise UserError(f"--cluster {address}: a server answers {where_said}, but it is not a {what}: "
                            f"{err.details()}") from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise UserError(f"--cluster {address}: a server answers {where_said}, but no Ray cluster within "
                            f"{wait_s:g} s") from None
        if code == grpc.StatusCode.UNAUTHENTICATED and os.environ.get("RAY_AUTH_MODE") != "token":
            raise UserError(f"--cluster {address}: the cluster wants Ray's auth token: run with RAY_AUTH_MODE=token "
                            "and the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN") from None
    finally:
        channel.close()


def bench_nodes(ray: ModuleType) -> list[Node]:
    """The live nodes with a bench slot, each with its class; a `UserError` for a node with a slot
    and no rnnc labels (it could not be placed by class), and when there is none at all."""
    found, unlabelled = live_nodes(ray)
    if unlabelled:
        raise UserError(f"--cluster: node {', '.join(unlabelled)} has a bench slot but not rnnc's labels: start it "
                        f"with `rnnc node` (or the `ray start` flags `rnnc node --print` shows)")
    if not found:
        raise UserError("--cluster: the cluster has no node with a bench slot: start each with `rnnc node "
                        "--address ADDRESS` (or the `ray start` flags `rnnc node --print` shows)")
    return found


def live_nodes(ray: ModuleType) -> tuple[list[Node], list[str]]:
    """The live nodes with a bench slot and rnnc's labels, and the names of those without labels.
    A name shared by several nodes (raylets of one host) gets the start of each node's id."""
    found, unlabelled = [], []
    for n in ray.nodes():
        if not n.get("Alive") or n.get("Resources", {}).get(SLOT, 0) < 1:
            continue
        labels = n.get("Labels") or {}
        machine = host.MachineClass.from_labels(labels)
        if machine is None:
            unlabelled.append(n.get("NodeManagerHostname") or n["NodeID"][:8])
            continue
        found.append((n["NodeID"], labels.get(NODE_LABEL) or n.get("NodeManagerHostname") or "node", machine))
    names = [name for _, name, _ in found]
    return [Node(i, name if names.count(name) == 1 else f"{name}-{i[:6]}", m) for i, name, m in found], unlabelled


def parse_on(selectors: list[str] | None) -> list[dict[str, list[str]]]:
    """`--on "cpu=*EPYC*,gpu=H100"` (repeatable): each a selector whose keys must all match, a key
    given twice matching either pattern; a class is swept when any selector matches it."""
    parsed = []
    for text in selectors or []:
        selector: dict[str, list[str]] = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            key, eq, pattern = part.partition("=")
            key = key.strip().lower()
            if not eq or key not in host.CLASS_KEYS or not pattern.strip():
                raise UserError(f"--on {text}: expected key=pattern,... with keys {', '.join(host.CLASS_KEYS)}, "
                                f"got {part!r}")
            selector.setdefault(key, []).append(pattern.strip())
        if not selector:
            raise UserError(f"--on {text!r}: no key=pattern given")
        parsed.append(selector)
    return parsed


def select(nodes: list[Node], selectors: list[dict[str, list[str]]], shown: list[str]) -> dict[str, list[Node]]:
    """The nodes of every class that a selector picks (all classes without one), by class name; a
    `UserError` listing the cluster's classes when none is picked, or when one class name is
    given to machines that differ."""
    classes: dict[str, list[Node]] = {}
    for node in nodes:
        classes.setdefault(node.machine.name, []).append(node)
    for name, members in classes.items():
        kinds = {n.machine for n in members}
        if len(kinds) > 1:
            raise UserError(f"--cluster: class {name!r} is given to machines that differ: "
                            + "; ".join(f"{n.name}: {n.machine.describe()}" for n in members))
    picked = {name: members for name, members in classes.items()
              if not selectors or any(members[0].machine.matches(s) for s in selectors)}
    if not picked:
        have = "; ".join(f"{name} ({members[0].machine.describe()}; {len(members)} node"
                         f"{'s' if len(members) != 1 else ''})" for name, members in sorted(classes.items()))
        raise UserError(f"--on {' --on '.join(shown)}: no machine class of the cluster matches; it has: {have}")
    return dict(sorted(picked.items()))


# the environment `ray start` runs in: a bench worker at nice 0, as outside Ray (Ray's default is 15)
NODE_ENV = {"RAY_worker_niceness": "0"}


def start_command(address: str | None, name: str | None, machine: host.MachineClass, slots: int,
                  extra: list[str]) -> list[str]:
    """`ray start` with this machine's bench slot and labels: a head without `address`. It runs
    with `NODE_ENV` in its environment."""
    labels = machine.labels() | {NODE_LABEL: host.label_value(name) if name else host.node_name()}
    where = ["--head"] if address is None else ["--address", address]
    return ["ray", "start", *where, "--resources", json.dumps({SLOT: slots}),
            "--labels", ",".join(f"{k}={v}" for k, v in labels.items()), *extra]


AUTH_REFUSED = "InvalidAuthToken"  # Ray 2.60's word, retried with a warning a second, when a node sends no token


class StartOutput:
    """`ray start`'s stderr, fed line by line: which lines a user sees as they come (Ray's progress),
    and, if it fails, why in one line. A traceback or a usage text is kept back from the first of
    its lines, and so is the auth token's retry warning."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failing = False

    def shown(self, line: str) -> bool:
        self.lines.append(line)
        self.failing = self.failing or line.startswith(("Traceback", "Usage:"))  # a crash, or a flag it refused
        return not self.failing and AUTH_REFUSED not in line

    def failure(self) -> str:
        return start_failure("".join(self.lines))


def start_failure(output: str) -> str:
    """Why `ray start` failed, in one line, from what it wrote to stderr (a traceback, mostly)."""
    if AUTH_REFUSED in output:  # Ray 2.60: a head that found ~/.ray/auth_token wants it from every node
        return ("the cluster wants Ray's auth token and this node sent none: run it with RAY_AUTH_MODE=token "
                "and the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN")
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "it exited without saying why"


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
