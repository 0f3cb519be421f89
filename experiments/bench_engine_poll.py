"""What Flower's simulation engine costs per polling pass as the number of simulated nodes grows (issue 24, point 6).

Flower 1.42's simulation runs the ServerApp, its ``InMemoryLinkState`` and the engine's threads in one process. The
engine's feeder thread (``vce_api.add_messages_to_queue``) loops, every 0.1 s, over *every* registered node and calls
``state.get_message_ins(node_id=..., limit=1)``; ``InMemoryLinkState.get_message_ins`` walks the whole
``message_ins_store`` under the state's lock and runs ``_check_stored_messages`` (expiry and federation check) on every
stored message, stopping early only when it finds an undelivered one for that node. A message stays in that store from
the ServerApp's push until the ServerApp pulls its reply (``InMemoryGrid.pull_messages`` deletes it then), so while a
round's sampled messages are in flight one pass costs N_nodes × M_in_flight checks, whether or not there is anything
to deliver. Nothing here runs Ray or ``flwr run``: the state, the node registration and the pushes are Flower's own
(``LinkStateFactory``, ``vce_api._register_nodes``, ``InMemoryGrid``), set up as ``flwr.simulation.run_simulation``
does, and a pass is the loop body of ``add_messages_to_queue``.

For each (nodes, messages) point it reports the first pass (which delivers the messages), then the steady pass (every
message delivered, replies not yet pulled: the state during most of a round), the checks one steady pass makes, and
the share of a core the real loop (Flower's ``add_messages_to_queue`` itself, in a thread) keeps busy. At two points
it also measures what the running loop does to the rest of the process: a fixed piece of Python work, and the
ServerApp's pull (``InMemoryGrid.pull_messages``, which needs the same lock), each alone and while the loop runs.
With ``--scale`` it sets these against the measured wall per device-round of ``experiments/results/scale.json``::

    python -m experiments.bench_engine_poll --json experiments/results/engine_poll.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from queue import Queue
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task  # pylint: disable=no-name-in-module
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState, RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from acme_flwr import accel

REPO = Path(__file__).resolve().parents[1]
POLL_WAIT_S = 0.1  # add_messages_to_queue's f_stop.wait(0.1) between passes
RUN_ID, TASK_ID = 4242, 4343
DEFAULT_NODES = (10, 100, 1000, 3000)
DEFAULT_MESSAGES = (5, 50)
BROADCAST_UP_TO = 1000  # discovery and setup message every node: M = N, measured up to this many nodes
INTERFERENCE = ((100, 5), (1000, 50))  # bench_scale's 100- and 1 000-device points (5 % sampled)
WORK_BUDGET = 200_000  # node × message checks worth repeating a steady pass for (keeps the run under a minute)


@dataclass
class Engine:
    """One simulation's link state as Flower builds it, N registered nodes and M pushed message-ins."""

    state: InMemoryLinkState
    grid: InMemoryGrid
    nodes: dict[int, int]  # node_id -> partition-id (vce_api's NodeToPartitionMapping)
    message_ids: list[str] = field(default_factory=list)


@contextmanager
def task_identity() -> Iterator[None]:
    """Set the process's task identity as ``run_simulation`` does (``Message`` needs it), and restore it after."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)  # noqa: SLF001
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = TASK_ID, RUN_ID, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved  # noqa: SLF001


def build(nodes: int, messages: int) -> Engine:
    """Flower's in-memory state with ``nodes`` registered nodes and ``messages`` train messages pushed through the
    grid to distinct nodes spread over the id range (as a round's sampling picks them). Call inside
    :func:`task_identity`."""
    if not 1 <= messages <= nodes:
        raise ValueError(f"messages must be between 1 and nodes ({nodes}), got {messages}; lower --messages")
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    if not isinstance(state, InMemoryLinkState):
        raise TypeError(f"Flower's simulation state is {type(state).__name__}, not InMemoryLinkState: re-read flwr")
    run = Run.create_empty(run_id=RUN_ID)
    run.primary_task_id, run.federation_id = TASK_ID, NOOP_FEDERATION_ID
    state.run_ids[RUN_ID] = RunRecord(run=run)  # as run_simulation pre-registers the run and its primary task
    state.task_store[TASK_ID] = Task(task_id=TASK_ID, run_id=RUN_ID)
    mapping = vce_api._register_nodes(num_nodes=nodes, state_factory=factory)  # noqa: SLF001
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    ids = list(mapping)
    targets = [ids[i * nodes // messages] for i in range(messages)]
    content = RecordDict({"config": ConfigRecord({"server-round": 1})})
    pushed = list(grid.push_messages([Message(content, dst_node_id=t, message_type="train") for t in targets]))
    if len(pushed) != messages:
        raise RuntimeError(f"Flower's state accepted {len(pushed)} of {messages} pushed messages")
    return Engine(state, grid, mapping, pushed)


def poll_pass(engine: Engine, queue: Queue[Message]) -> int:
    """One pass of ``vce_api.add_messages_to_queue``'s loop (its body, without the wait): every node asked for one
    undelivered message. Returns how many it delivered."""
    delivered = 0
    for node_id in engine.nodes.keys():
        for msg in engine.state.get_message_ins(node_id=node_id, limit=1):
            queue.put(msg)
            delivered += 1
    return delivered


def count_checks(engine: Engine) -> tuple[int, int]:
    """(``get_message_ins`` calls, message checks) of one steady pass, counted by wrapping the state's methods."""
    counts = {"calls": 0, "checks": 0}
    state = engine.state
    get, check = state.get_message_ins, state._check_stored_messages  # noqa: SLF001

    def counted_get(*a: Any, **kw: Any) -> list[Message]:
        counts["calls"] += 1
        return get(*a, **kw)

    def counted_check(ids: set[str], *a: Any, **kw: Any) -> None:
        counts["checks"] += len(ids)
        check(ids, *a, **kw)

    state.get_message_ins, state._check_stored_messages = counted_get, counted_check  # type: ignore[method-assign]
    try:
        poll_pass(engine, Queue())
    finally:
        del state.get_message_ins, state._check_stored_messages
    return counts["calls"], counts["checks"]


def measure(nodes: int, messages: int, repeats: int = 3) -> dict[str, Any]:
    """Time the first pass (delivers every message) and ``repeats`` steady passes (nothing left to deliver, every
    message still stored until its reply is pulled), and count one steady pass's checks."""
    with task_identity():
        engine = build(nodes, messages)
        queue: Queue[Message] = Queue()
        t0 = time.perf_counter()
        delivered = poll_pass(engine, queue)
        first = time.perf_counter() - t0
        steady, again = [], 0
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            again += poll_pass(engine, queue)
            steady.append(time.perf_counter() - t0)
        calls, checks = count_checks(engine)
    pass_s = statistics.median(steady)
    return {"nodes": nodes, "messages": messages, "first_pass_s": round(first, 5), "delivered_first": delivered,
            "pass_s": round(pass_s, 5), "passes": len(steady), "delivered_after": again,
            "calls_per_pass": calls, "checks_per_pass": checks,
            "us_per_check": round(1e6 * pass_s / checks, 3) if checks else None,
            "poll_share": round(pass_s / (pass_s + POLL_WAIT_S), 3)}


def _python_work(rounds: int = 40) -> float:
    """A fixed piece of pure-Python work (as the ServerApp's aggregation or the backend's message (de)serialization
    in the same process); its wall time."""
    t0 = time.perf_counter()
    for _ in range(rounds):
        sum(i * i for i in range(20_000))
    return time.perf_counter() - t0


def _pull_ms(engine: Engine, times: int = 20) -> float:
    """Mean wall of the ServerApp's pull (``InMemoryGrid.pull_messages`` for the round's messages), in ms."""
    t0 = time.perf_counter()
    for _ in range(times):
        engine.grid.pull_messages(engine.message_ids)
    return 1e3 * (time.perf_counter() - t0) / times


def interference(nodes: int, messages: int, cycles: int = 3) -> dict[str, Any]:
    """Run Flower's own ``add_messages_to_queue`` in a thread (as the engine does), ``cycles`` times for about a
    second each: its passes per second and the share of the time it spends inside ``get_message_ins``, and the
    median wall of a fixed piece of Python work and of the ServerApp's pull in the same process while it runs against
    their median alone, measured between the runs (alternating, so a change in the machine's load hits both)."""
    alone_work: list[float] = []
    alone_pull: list[float] = []
    works: list[float] = []
    pulls: list[float] = []
    busy = {"s": 0.0, "calls": 0, "elapsed": 0.0}
    with task_identity():
        engine = build(nodes, messages)
        poll_pass(engine, Queue())  # deliver first: the loop then runs in its steady state
        get = engine.state.get_message_ins

        def timed_get(*a: Any, **kw: Any) -> list[Message]:
            t0 = time.perf_counter()
            try:
                return get(*a, **kw)
            finally:
                busy["s"] += time.perf_counter() - t0
                busy["calls"] += 1

        for _ in range(cycles):
            for _ in range(3):
                alone_work.append(_python_work())
                alone_pull.append(_pull_ms(engine, times=5))
            engine.state.get_message_ins = timed_get  # type: ignore[method-assign]
            stop = threading.Event()
            thread = threading.Thread(target=vce_api.add_messages_to_queue,
                                      args=(engine.state, Queue(), engine.nodes, stop), daemon=True)
            t_start = time.perf_counter()
            thread.start()
            try:
                for _ in range(3):
                    works.append(_python_work())
                    pulls.append(_pull_ms(engine, times=5))
            finally:
                stop.set()
                thread.join(timeout=60)
                busy["elapsed"] += time.perf_counter() - t_start
                del engine.state.get_message_ins
    work_a, work_p = statistics.median(alone_work), statistics.median(works)
    pull_a, pull_p = statistics.median(alone_pull), statistics.median(pulls)
    return {"nodes": nodes, "messages": messages, "seconds": round(busy["elapsed"], 2),
            "passes_per_s": round(busy["calls"] / nodes / busy["elapsed"], 2),
            "busy_share": round(busy["s"] / busy["elapsed"], 3),
            "work_alone_s": round(work_a, 4), "work_polling_s": round(work_p, 4),
            "work_slowdown": round(work_p / work_a, 2),
            "pull_alone_ms": round(pull_a, 3), "pull_polling_ms": round(pull_p, 3),
            "pull_slowdown": round(pull_p / pull_a, 1)}


def grid_points(nodes: list[int], messages: list[int], fraction: float, extra: list[tuple[int, int]]) -> \
        list[tuple[int, int]]:
    """(nodes, messages) to measure: each fixed message count that fits, the sampled fraction (at least 2, as
    ``fraction_train`` samples), every node at once (discovery and setup) up to BROADCAST_UP_TO, and ``extra``."""
    out: list[tuple[int, int]] = []
    for n in nodes:
        for m in [*messages, max(2, round(fraction * n)), *([n] if n <= BROADCAST_UP_TO else [])]:
            if 1 <= m <= n and (n, m) not in out:
                out.append((n, m))
    out += [p for p in extra if p not in out]
    return sorted(out)


def scale_points(path: Path) -> list[dict[str, Any]]:
    """bench_scale's measured points: devices, devices trained per round and wall per device-round."""
    if not path.exists():
        return []
    return [{"model": p["model"], "devices": p["devices"], "trained_per_round": p["device_rounds"] // p["rounds"],
             "rounds_wall_s": p["rounds_wall_s"], "rounds": p["rounds"], "s_per_device_round": p["s_per_device_round"]}
            for p in json.loads(path.read_text())["points"] if p.get("device_rounds")]


def compare(scale: list[dict[str, Any]], passes: dict[tuple[int, int], dict[str, Any]], workers: int) -> \
        list[dict[str, Any]]:
    """For each bench_scale point: the steady pass at its (devices, trained per round), how many passes a round of
    its measured wall makes, the poll's CPU per device-round, and the bound on the wall per device-round the poll
    alone can cause when ``workers`` busy device workers share as many cores: (workers + share) / workers."""
    out = []
    for p in scale:
        m = passes.get((p["devices"], p["trained_per_round"]))
        if m is None:
            continue
        round_s = p["rounds_wall_s"] / p["rounds"]
        per_round = round_s / (m["pass_s"] + POLL_WAIT_S)
        out.append({**p, "pass_s": m["pass_s"], "poll_share": m["poll_share"],
                    "passes_per_round": round(per_round, 1),
                    "poll_cpu_per_device_round_s": round(per_round * m["pass_s"] / p["trained_per_round"], 4),
                    "slowdown_bound": round((workers + m["poll_share"]) / workers, 3)})
    return out


def ratios(comparison: list[dict[str, Any]], inter: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, 1 000 vs 100 devices: the measured ratio of wall per device-round, and the most the poll can make of
    it: on the cores (``slowdown_bound``) and inside the simulation process (how much slower Python work there runs
    while the loop runs at 1 000 devices' point, the GIL and the core it takes; taken as 1 at 100); a device-round's
    time is spent either in that process or on the workers' cores, so ``poll_bound``, the larger, bounds both."""
    slow = {(i["nodes"], i["messages"]): i["work_slowdown"] for i in inter}
    out = []
    for model in sorted({c["model"] for c in comparison}):
        by_n = {c["devices"]: c for c in comparison if c["model"] == model}
        if 100 in by_n and 1000 in by_n:
            lo, hi = by_n[100], by_n[1000]
            cores = hi["slowdown_bound"] / lo["slowdown_bound"]
            gil = slow.get((1000, hi["trained_per_round"]))  # at most this much slower than at 100 (>= 1 there)
            out.append({"model": model, "measured": round(hi["s_per_device_round"] / lo["s_per_device_round"], 2),
                        "cores_bound": round(cores, 2), "gil_bound": round(gil, 2) if gil else None,
                        "poll_bound": round(max(cores, gil or 0.0), 2)})
    return out


def run(nodes: list[int], messages: list[int], fraction: float, repeats: int, scale: Path | None,
        workers: int, interference_points: tuple[tuple[int, int], ...] = INTERFERENCE,
        cycles: int = 3) -> dict[str, Any]:
    """The whole measurement as one JSON-able dict (no command or provenance)."""
    scaled = scale_points(scale) if scale else []
    extra = [(s["devices"], s["trained_per_round"]) for s in scaled if s["devices"] <= max(nodes)]
    points = []
    for n, m in grid_points(nodes, messages, fraction, extra):
        points.append(measure(n, m, repeats=min(repeats, max(1, WORK_BUDGET // (n * m)))))
        print(json.dumps(points[-1]), flush=True)
    inter = [interference(n, m, cycles) for n, m in interference_points]
    comparison = compare(scaled, {(p["nodes"], p["messages"]): p for p in points}, workers)
    return {"points": points, "interference": inter, "scale": comparison, "ratios": ratios(comparison, inter),
            "workers": workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default=",".join(map(str, DEFAULT_NODES)), help="node counts, comma-separated")
    parser.add_argument("--messages", default=",".join(map(str, DEFAULT_MESSAGES)),
                        help="fixed counts of messages in flight, comma-separated")
    parser.add_argument("--fraction", type=float, default=0.05, help="also measure this sampled fraction of the nodes")
    parser.add_argument("--repeats", type=int, default=3, help="steady passes per point (fewer at the largest)")
    parser.add_argument("--scale", type=Path, default=REPO / "experiments" / "results" / "scale.json",
                        help="bench_scale's result to compare with")
    parser.add_argument("--workers", type=int, default=2,
                        help="busy device workers sharing as many cores in bench_scale (one Ray actor per core)")
    parser.add_argument("--json", type=Path, default=None, help="write the measurement here")
    args = parser.parse_args()
    nodes = [int(x) for x in args.nodes.split(",")]
    messages = [int(x) for x in args.messages.split(",")]
    result = run(nodes, messages, args.fraction, args.repeats, args.scale, args.workers)
    command = " ".join(["python -m experiments.bench_engine_poll", *sys.argv[1:]])
    result = {"command": command, **result,
              "versions": {"flwr": metadata.version("flwr"), "python": platform.python_version()},
              "machine": f"{platform.machine()}, {accel.cores()} CPUs, {platform.system()}",
              "date": time.strftime("%Y-%m-%d")}
    for i in result["interference"]:
        print(json.dumps(i))
    for c in result["scale"]:
        print(json.dumps(c))
    for r in result["ratios"]:
        print(f"{r['model']}: wall per device-round 1000/100 measured {r['measured']}x; "
              f"the poll alone bounds it at {r['poll_bound']}x (cores {r['cores_bound']}x, GIL {r['gil_bound']}x)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
