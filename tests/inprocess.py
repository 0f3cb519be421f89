"""An in-process Grid: routes each Message to a ClientApp with a per-node Context, no Ray, no SuperLink.

Strategy tests use it to exercise configure/aggregate logic, faults and drop-in mode in milliseconds; the real
Ray-backed `flwr run` path is covered by the end-to-end test.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity
from ray import cloudpickle

Hook = Callable[[Message, int], "Message | None | object"]
DROP = object()  # an intercept returning DROP loses the reply, as a timed-out or vanished node does


class InProcessGrid(Grid):
    """Node ids are deliberately non-sequential (like Flower's random ids); partition-id i lives on node 1000+7i."""

    def __init__(self, app: ClientApp, num_nodes: int, run_config: dict | None = None,
                 intercept: Hook | None = None, pickled: bool = False) -> None:
        """``pickled``: like Flower's Ray backend, every message gets a freshly unpickled copy of the ClientApp and
        of the node's Context (whose updated copy is kept), so nothing survives on the app object between messages."""
        TaskIdentity.run_id = 1  # Message() reads the run id of the process it is built in
        TaskIdentity.node_id = 0
        TaskIdentity.task_id = 0
        self.app = app
        self.intercept = intercept
        self.pickled = pickled
        self.contexts = {
            1000 + 7 * pid: Context(run_id=1, node_id=1000 + 7 * pid,
                                    node_config={"partition-id": pid, "num-partitions": num_nodes},
                                    state=RecordDict(), run_config=dict(run_config or {}))
            for pid in range(num_nodes)
        }
        self.sent: list[Message] = []

    def set_run(self, run) -> None:  # noqa: ANN001 - unused in tests
        pass

    @property
    def run(self):  # noqa: ANN201
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            if self.intercept is not None:
                override = self.intercept(msg, node)
                if override is DROP:
                    continue
                if override is not None:
                    replies.append(override)
                    continue
            app, context = self.app, self.contexts[node]
            if self.pickled:
                app, context = pickle.loads(cloudpickle.dumps((app, context)))
                self.contexts[node] = context
            try:
                reply = app(msg, context)
            except Exception as exc:  # a raising ClientApp becomes an error reply, as in Flower
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            replies.append(reply)
        return replies


class RecordingGrid(InProcessGrid):
    """Also keeps every (sent, reply) pair, so tests can recompute what the edge should have done."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.replies: list[tuple[Message | None, Message]] = []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        by_id = {m.metadata.message_id: m for m in messages}
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.replies += [(by_id.get(r.metadata.reply_to_message_id), r) for r in replies]
        return replies


@contextmanager
def flower_log_lines() -> Iterator[list[str]]:
    """Every line Flower's logger prints while the block runs (our lines reach it through ``use_flower_logging``)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep()
    logging.getLogger("flwr").addHandler(handler)
    try:
        yield lines
    finally:
        logging.getLogger("flwr").removeHandler(handler)
