"""The engine-poll measurement (experiments/bench_engine_poll.py) measures Flower's own polling loop, at tiny sizes:
a pass asks every node, each ask checks every stored message, messages stay stored until their reply is pulled, and
the table renders what the measurement wrote."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from queue import Queue
from typing import Any

import pytest
from flwr.app import Message, RecordDict
from flwr.server.superlink.fleet.vce import vce_api

from experiments import bench_engine_poll as bench
from experiments.report import engine_poll


def test_a_pass_asks_every_node_and_checks_every_stored_message() -> None:
    """One steady pass costs nodes × messages checks: more nodes, more asks and checks for the same messages."""
    small, large = bench.measure(4, 2, repeats=1), bench.measure(40, 2, repeats=2)
    for p in (small, large):
        assert p["calls_per_pass"] == p["nodes"]
        assert p["checks_per_pass"] == p["nodes"] * p["messages"]
        assert p["delivered_first"] == p["messages"] and p["delivered_after"] == 0
        assert p["pass_s"] > 0 and p["first_pass_s"] > 0 and 0 < p["poll_share"] < 1
    assert large["passes"] == 2
    assert large["calls_per_pass"] > small["calls_per_pass"] and large["checks_per_pass"] > small["checks_per_pass"]


def test_the_measured_pass_is_what_flowers_loop_does() -> None:
    """Flower's ``add_messages_to_queue``, run for one pass, asks every node once and queues every message, as
    ``poll_pass`` does (if Flower's loop changes, this fails and the measurement must follow it)."""
    with bench.task_identity():
        engine = bench.build(30, 3)
        asked: list[int] = []
        stop = threading.Event()
        get = engine.state.get_message_ins

        def one_pass(node_id: int, limit: int | None, **kw: Any) -> list[Message]:
            asked.append(node_id)
            if len(asked) == len(engine.nodes):
                stop.set()
            return get(node_id=node_id, limit=limit, **kw)

        engine.state.get_message_ins = one_pass  # type: ignore[method-assign]
        queue: Queue[Message] = Queue()
        thread = threading.Thread(target=vce_api.add_messages_to_queue, args=(engine.state, queue, engine.nodes, stop))
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert asked == list(engine.nodes) and queue.qsize() == 3
        ours = bench.build(30, 3)
        assert bench.poll_pass(ours, Queue()) == 3


def test_a_message_stays_stored_until_its_reply_is_pulled() -> None:
    """Delivery does not remove a message from the store; pulling its reply does (so a round's messages are scanned
    on every pass until the ServerApp has each reply)."""
    with bench.task_identity():
        engine = bench.build(10, 3)
        delivered: Queue[Message] = Queue()
        bench.poll_pass(engine, delivered)
        assert engine.state.num_message_ins() == 3
        msg = delivered.get()
        reply = Message(RecordDict(), reply_to=msg)
        reply.metadata.__dict__["_message_id"] = "reply-1"  # as the engine's worker assigns one
        assert engine.state.store_message_res(reply) == "reply-1"
        assert engine.state.num_message_ins() == 3
        assert len(list(engine.grid.pull_messages(engine.message_ids))) == 1
        assert engine.state.num_message_ins() == 2


def test_more_messages_than_nodes_is_refused() -> None:
    with pytest.raises(ValueError, match="messages must be between 0 and nodes"):
        bench.build(3, 4)
    with pytest.raises(ValueError, match="messages must be between 0 and nodes"):
        bench.build(3, -1)


def test_the_table_renders_the_measurement_and_says_how_to_make_a_missing_one(tmp_path: Path) -> None:
    assert "python -m experiments.bench_engine_poll" in str(engine_poll(tmp_path))
    scale = tmp_path / "scale.json"
    scale.write_text(json.dumps({"points": [
        {"model": "m", "devices": 4, "rounds": 2, "device_rounds": 4, "rounds_wall_s": 2.0, "s_per_device_round": 0.5},
        {"model": "m", "devices": 20, "rounds": 2, "device_rounds": 6, "rounds_wall_s": 3.0,
         "s_per_device_round": 0.5}]}))
    result = bench.run([4, 20], [2], 0.05, 1, scale, workers=2, interference_points=((20, 2),), cycles=1,
                       work_s=0.01, engine_rounds_each=2)
    assert {(p["nodes"], p["messages"]) for p in result["points"]} == {(4, 2), (4, 4), (20, 2), (20, 3), (20, 20)}
    assert [c["devices"] for c in result["scale"]] == [4, 20] and result["ratios"] == []
    assert result["interference"][0]["passes_per_s"] > 0 and result["interference"][0]["work_slowdown"] > 0
    assert [(e["nodes"], e["messages"], e["poll"], e["rounds"]) for e in result["engine"]] == \
        [(20, 2, "flower", 2), (20, 2, "indexed", 2)]
    for e2e in result["engine"]:
        assert len(e2e["round_walls_s"]) == 2 and e2e["over_ideal"] >= 1.0  # two workers cannot beat work / workers
    (tmp_path / "engine_poll.json").write_text(json.dumps(
        {**result, "command": "cmd", "date": "d", "machine": "m", "versions": {"flwr": "1", "python": "3"}}))
    header, rows, note = engine_poll(tmp_path)
    assert len(rows) == 5 and all(len(r) == len(header) for r in rows)
    assert [r[:2] for r in rows[2:]] == [["20", "2"], ["20", "3"], ["20", "20"]]
    assert "–" not in rows[2][7:] and rows[3][7:] == ["–"] * 3  # only (20, 2) was measured beside the loop
    assert "`cmd`" in note and "20 devices, 3 trained per round" in note


def test_the_indexed_counterfactual_asks_the_store_only_for_nodes_with_a_pending_message() -> None:
    """With :func:`index_pending` a pass checks messages only for the nodes that have one (N × M → about M × M), and
    still delivers every message exactly once."""
    with bench.task_identity():
        engine = bench.build(50, 0)
        assert engine.grid.state is engine.state  # the grid pushes into the state the engine polls
        bench.index_pending(engine.state)
        engine.grid.push_messages(bench.round_messages(list(engine.nodes), 5))
        checks = {"n": 0}
        check = engine.state._check_stored_messages  # noqa: SLF001

        def counted(ids: set[str], *a: Any, **kw: Any) -> None:
            checks["n"] += len(ids)
            check(ids, *a, **kw)

        engine.state._check_stored_messages = counted  # type: ignore[method-assign]  # noqa: SLF001
        assert bench.poll_pass(engine, Queue()) == 5 and 0 < checks["n"] <= 5 * 5
        checks["n"] = 0
        assert bench.poll_pass(engine, Queue()) == 0 and checks["n"] == 0
