"""The typed device state (checkpoint and context round trips) and the registered device-side training modes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, RecordDict

from acme_flwr import protocol as P
from acme_flwr.clients.modes import DEVICE_MODES, TrainMode, register_mode
from acme_flwr.clients.state import DeviceState
from acme_flwr.registry import RegistryError

from .device_kit import ask, evaluate_message, grid_for, package, setup_message


def _record(seed: int, *shapes: tuple[int, ...]) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord({f"k{i}": Array(rng.standard_normal(s).astype(np.float32)) for i, s in enumerate(shapes)})


def _full_state() -> DeviceState:
    pruner = ArrayRecord({"momentum": Array(np.arange(4, dtype=np.float32)), "steps": Array(np.array([3]))})
    return DeviceState("acme", json.dumps({"image_size": 8}), json.dumps({"name": "linear"}), "ab" * 32,
                       _record(0, (2, 3), (4,)), pruner, _record(1, (2, 3), (4,)), {"origin": "setup"})


@pytest.mark.parametrize("optional", [True, False])
def test_checkpoint_then_restore_round_trips_every_field(tmp_path, optional: bool) -> None:  # noqa: ANN001
    state = _full_state() if optional else dataclasses.replace(_full_state(), pruner=None, personal=None, extra={})
    path = tmp_path / "device-0-round1.npz"
    state.checkpoint(path)
    restored = DeviceState.from_checkpoint(path)
    for f in dataclasses.fields(DeviceState):  # field by field, so a lost one is named
        assert DeviceState.__eq__(dataclasses.replace(state, **{f.name: getattr(restored, f.name)}), state), f.name
    assert restored == state and not list(tmp_path.glob("*.tmp*"))
    changed = dataclasses.replace(restored, personal=_record(2, (2, 3), (4,)) if optional else _record(2, (1,)))
    assert changed != state  # the comparison can fail


def test_context_save_then_load_round_trips_and_drops_absent_parts() -> None:
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    state = _full_state()
    state.save(context)
    assert DeviceState.load(context, "acme") == state
    assert f"acme.backbone.{state.backbone_fp}" in context.state  # the fingerprint, not the backbone
    state.personal = None
    state.save(context)
    assert "acme.personal" not in context.state and DeviceState.load(context, "acme") == state
    with pytest.raises(RuntimeError, match="no setup for strategy tag 'other'"):
        DeviceState.load(context, "other")


def test_a_device_checkpoint_restores_in_a_resumed_setup(tmp_path) -> None:  # noqa: ANN001
    """The handlers' checkpoint after an evaluation round is what a resumed setup puts back (named by the
    partition-id from data_fn)."""
    grid, _ = grid_for(tmp_path / "store", checkpoint_fn=lambda c: tmp_path / "ckpt")
    content, arch = package()
    ask(grid, setup_message(content, arch, 1007))
    assert not ask(grid, evaluate_message(1007, server_round=1)).has_error()
    saved = DeviceState.load(grid.contexts[1007], "acme")
    path = tmp_path / "ckpt" / "acme" / "device-1-round1.npz"
    assert DeviceState.from_checkpoint(path) == saved
    fresh, _ = grid_for(tmp_path / "store", checkpoint_fn=lambda c: tmp_path / "ckpt")
    ask(fresh, setup_message(content, arch, 1007, **{"resume-round": 1}))
    assert DeviceState.load(fresh.contexts[1007], "acme") == saved
    missing = ask(fresh, setup_message(content, arch, 1000, **{"resume-round": 1}))
    assert missing.has_error() and "no device checkpoint for round 1" in missing.error.reason


def test_modes_are_registered_one_per_name_and_new_ones_can_be_added(tmp_path) -> None:  # noqa: ANN001
    assert DEVICE_MODES.names() == ["ditto", "fedbabu", "fedrep", "standard"]
    with pytest.raises(RegistryError, match=r"unknown device train mode 'nope'; allowed: \['ditto'"):
        DEVICE_MODES.get("nope")
    seen: list[str] = []

    @register_mode("test-eval-shared")
    class Shared(TrainMode):
        def evaluated_header(self, header, r):  # noqa: ANN001, ANN201
            seen.append(r.state.tag)
            return header

    try:
        grid, _ = grid_for(tmp_path / "store")
        content, arch = package()
        ask(grid, setup_message(content, arch, 1000))
        msg = evaluate_message(1000)
        msg.content[P.CONFIG]["mode"] = "test-eval-shared"
        assert not ask(grid, msg).has_error() and seen == ["acme"]
    finally:
        DEVICE_MODES.unregister("test-eval-shared")
