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
it also measures what the running loop does to the rest of the process (a fixed piece of Python work, and the
ServerApp's pull, ``InMemoryGrid.pull_messages``, which needs the same lock, each alone and while the loop runs), and
runs Flower's engine end to end (``vce_api.run_api`` and ``InMemoryGrid.send_and_receive``) with stand-in workers:
two processes that spend a fixed CPU time per message on the same cores, in place of Ray actors. It sets these
against the measured wall per device-round of ``experiments/results/scale.json`` (``--scale``)::

    python -m experiments.bench_engine_poll --json experiments/results/engine_poll.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from queue import Queue
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task  # pylint: disable=no-name-in-module
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend.backend import Backend
from flwr.server.superlink.fleet.vce.metrics import VceMetrics
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
INTERFERENCE = ((100, 5), (1000, 50))  # bench_scale's 100- and 1 000-device points (5 % sampled): end to end
WORK_BUDGET = 200_000  # node × message checks worth repeating a steady pass for (keeps the run under a minute)


@dataclass
class Engine:
    """One simulation's link state as Flower builds it, N registered nodes and M pushed message-ins."""

    factory: LinkStateFactory
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
    if not 0 <= messages <= nodes:
        raise ValueError(f"messages must be between 0 and nodes ({nodes}), got {messages}; lower --messages")
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
    pushed = list(grid.push_messages(round_messages(list(mapping), messages)))
    if len(pushed) != messages:
        raise RuntimeError(f"Flower's state accepted {len(pushed)} of {messages} pushed messages")
    return Engine(factory, state, grid, mapping, pushed)


def round_messages(node_ids: list[int], messages: int, server_round: int = 1) -> list[Message]:
    """One train message to each of ``messages`` distinct nodes spread over the ids (as a round's sampling picks
    them; shifted by the round so consecutive rounds pick other nodes)."""
    n = len(node_ids)
    return [Message(RecordDict({"config": ConfigRecord({"server-round": server_round})}),
                    dst_node_id=node_ids[(i * n // messages + server_round) % n], message_type="train")
            for i in range(messages)]


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


# A stand-in device worker: a separate process that, per request line, spends that many seconds of its own CPU time
# (a device's training on its core) and answers; standard library only, so it starts in milliseconds.
WORKER = """import sys, time
for line in sys.stdin:
    end = time.process_time() + float(line)
    while time.process_time() < end:
        pass
    sys.stdout.write("done\\n")
    sys.stdout.flush()
"""


class StandInBackend(Backend):
    """Flower's simulation ``Backend`` with worker processes that each spend ``work_s`` of CPU per message in place
    of Ray actors running a ClientApp: the engine, its threads and its state stay Flower's own, the device's work
    competes for the same cores, and no Ray is involved. The reply is empty."""

    def __init__(self, workers: int, work_s: float) -> None:
        super().__init__({})
        self.work_s = work_s
        self.procs = [subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, bufsize=1) for _ in range(workers)]
        self.idle: Queue[subprocess.Popen[str]] = Queue()
        for proc in self.procs:
            self.idle.put(proc)

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        """Nothing to build: the work does not run a ClientApp."""

    @property
    def num_workers(self) -> int:
        return len(self.procs)

    def is_worker_idle(self) -> bool:
        return not self.idle.empty()

    def terminate(self) -> None:
        """Stop the worker processes this backend started."""
        for proc in self.procs:
            if proc.stdin:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def process_message(self, message: Message, context: Any) -> tuple[Message, Any]:
        proc = self.idle.get()
        try:
            assert proc.stdin and proc.stdout
            proc.stdin.write(f"{self.work_s}\n")
            if proc.stdout.readline() != "done\n":  # blocks this engine thread as ray.get does
                raise RuntimeError(f"stand-in worker {proc.pid} died")
        finally:
            self.idle.put(proc)
        return Message(RecordDict(), reply_to=message), context


def index_pending(state: InMemoryLinkState) -> None:
    """Counterfactual: let ``get_message_ins`` answer a node with nothing pending at once (a count of undelivered
    messages per node, kept by wrapping ``store_message_ins``), so a pass scans only for the nodes that have a
    message: what the engine would cost if Flower's state were indexed by node. Everything else is unchanged."""
    pending: dict[int, int] = {}
    lock = threading.Lock()
    store, get = state.store_message_ins, state.get_message_ins

    def store_ins(message: Message) -> str | None:
        message_id = store(message)
        if message_id:
            with lock:
                pending[message.metadata.dst_node_id] = pending.get(message.metadata.dst_node_id, 0) + 1
        return message_id

    def get_ins(node_id: int, limit: int | None, **kw: Any) -> list[Message]:
        if not pending.get(node_id):
            return []
        out = get(node_id=node_id, limit=limit, **kw)
        with lock:
            pending[node_id] -= len(out)
        return out

    state.store_message_ins, state.get_message_ins = store_ins, get_ins  # type: ignore[method-assign]


def engine_rounds(nodes: int, messages: int, work_s: float = 0.1, workers: int = 2, rounds: int | None = None,
                  indexed: bool = False) -> dict[str, Any]:
    """Flower's simulation engine end to end without Ray: ``vce_api.run_api`` (the poll, the reply injector and one
    engine thread per worker) over ``nodes`` registered nodes with :class:`StandInBackend`, and the ServerApp's
    ``InMemoryGrid.send_and_receive`` of ``messages`` sampled messages per round, after one untimed round that
    starts the engine. ``rounds`` defaults to enough for about 50 device messages. Returns each round's wall, the
    wall per device message and its ratio to the ideal (``work_s`` / ``workers``: the workers never idle, nothing
    else costs). ``indexed``: the same with :func:`index_pending`'s counterfactual poll."""
    rounds = rounds or max(1, 50 // messages)
    with task_identity():
        engine = build(nodes, 0)
        if indexed:
            index_pending(engine.state)
        stores = vce_api._register_node_info_stores(engine.nodes, engine.grid.run, None)  # noqa: SLF001
        stop = threading.Event()
        thread = threading.Thread(target=vce_api.run_api, daemon=True,
                                  args=(ClientApp, lambda: StandInBackend(workers, work_s), engine.nodes,
                                        engine.factory, stores, stop, VceMetrics()))
        thread.start()
        walls = []
        try:
            list(engine.grid.send_and_receive(round_messages(list(engine.nodes), min(messages, workers), 0),
                                              timeout=600))
            for r in range(1, rounds + 1):
                t0 = time.perf_counter()
                replies = list(engine.grid.send_and_receive(round_messages(list(engine.nodes), messages, r),
                                                            timeout=600))
                walls.append(time.perf_counter() - t0)
                if len(replies) != messages:
                    raise RuntimeError(f"the engine returned {len(replies)} of {messages} replies in round {r}")
        finally:
            stop.set()
            thread.join(timeout=60)
    per = sum(walls) / (rounds * messages)
    return {"nodes": nodes, "messages": messages, "poll": "indexed" if indexed else "flower", "work_s": work_s,
            "workers": workers, "rounds": rounds,
            "round_walls_s": [round(w, 3) for w in walls], "s_per_message": round(per, 4),
            "over_ideal": round(per / (work_s / workers), 3)}


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


def ratios(comparison: list[dict[str, Any]], inter: list[dict[str, Any]], e2e: list[dict[str, Any]]) -> \
        list[dict[str, Any]]:
    """Per model, 1 000 vs 100 devices: the measured ratio of wall per device-round, and the most the poll can make of
    it: on the cores (``slowdown_bound``) and inside the simulation process (how much slower Python work there runs
    while the loop runs at 1 000 devices' point, the GIL and the core it takes; taken as 1 at 100); a device-round's
    time is spent either in that process or on the workers' cores, so ``poll_bound``, the larger, bounds both;
    ``engine``: the same ratio of wall per device message measured through Flower's engine with the stand-in
    workers (:func:`engine_rounds`), and ``engine_indexed`` with the counterfactual indexed poll, where measured."""
    slow = {(i["nodes"], i["messages"]): i["work_slowdown"] for i in inter}
    per_msg = {(e["nodes"], e["messages"], e["poll"]): e["s_per_message"] for e in e2e}
    out = []
    for model in sorted({c["model"] for c in comparison}):
        by_n = {c["devices"]: c for c in comparison if c["model"] == model}
        if 100 in by_n and 1000 in by_n:
            lo, hi = by_n[100], by_n[1000]
            cores = hi["slowdown_bound"] / lo["slowdown_bound"]
            gil = slow.get((1000, hi["trained_per_round"]))  # at most this much slower than at 100 (>= 1 there)
            engine = {}
            for poll in ("flower", "indexed"):
                a = per_msg.get((100, lo["trained_per_round"], poll))
                b = per_msg.get((1000, hi["trained_per_round"], poll))
                engine[poll] = round(b / a, 2) if a and b else None
            out.append({"model": model, "measured": round(hi["s_per_device_round"] / lo["s_per_device_round"], 2),
                        "cores_bound": round(cores, 2), "gil_bound": round(gil, 2) if gil else None,
                        "poll_bound": round(max(cores, gil or 0.0), 2),
                        "engine": engine["flower"], "engine_indexed": engine["indexed"]})
    return out


def run(nodes: list[int], messages: list[int], fraction: float, repeats: int, scale: Path | None,
        workers: int, interference_points: tuple[tuple[int, int], ...] = INTERFERENCE,
        cycles: int = 3, work_s: float = 0.1, engine_rounds_each: int | None = None) -> dict[str, Any]:
    """The whole measurement as one JSON-able dict (no command or provenance)."""
    scaled = scale_points(scale) if scale else []
    extra = [(s["devices"], s["trained_per_round"]) for s in scaled if s["devices"] <= max(nodes)]
    points = []
    for n, m in grid_points(nodes, messages, fraction, extra):
        points.append(measure(n, m, repeats=min(repeats, max(1, WORK_BUDGET // (n * m)))))
        print(json.dumps(points[-1]), flush=True)
    inter = [interference(n, m, cycles) for n, m in interference_points]
    e2e = [engine_rounds(n, m, work_s, workers, engine_rounds_each, indexed)
           for n, m in interference_points for indexed in (False, True)]
    for x in [*inter, *e2e]:
        print(json.dumps(x), flush=True)
    comparison = compare(scaled, {(p["nodes"], p["messages"]): p for p in points}, workers)
    return {"points": points, "interference": inter, "engine": e2e, "scale": comparison,
            "ratios": ratios(comparison, inter, e2e), "workers": workers}


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
    parser.add_argument("--work", type=float, default=0.1,
                        help="CPU seconds each device message costs a stand-in worker in the end-to-end engine runs")
    parser.add_argument("--json", type=Path, default=None, help="write the measurement here")
    args = parser.parse_args()
    nodes = [int(x) for x in args.nodes.split(",")]
    messages = [int(x) for x in args.messages.split(",")]
    load_before = os.getloadavg()[0]
    result = run(nodes, messages, args.fraction, args.repeats, args.scale, args.workers, work_s=args.work)
    command = " ".join(["python -m experiments.bench_engine_poll", *sys.argv[1:]])
    result = {"command": command, **result,
              "versions": {"flwr": metadata.version("flwr"), "python": platform.python_version()},
              "machine": f"{platform.machine()}, {accel.cores()} CPUs, {platform.system()}",
              "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
              "date": time.strftime("%Y-%m-%d")}
    for c in result["scale"]:
        print(json.dumps(c))
    for r in result["ratios"]:
        print(f"{r['model']}: wall per device-round 1000/100 measured {r['measured']}x; "
              f"the poll alone bounds it at {r['poll_bound']}x (cores {r['cores_bound']}x, GIL {r['gil_bound']}x); "
              f"Flower's engine with stand-in workers: {r['engine']}x, with the poll indexed: {r['engine_indexed']}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
