"""The device-side model store: one stored copy per package, damaged files never used, a restart re-creates it."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord

from acme_flwr import protocol as P
from acme_flwr.model_store import ModelStore, ModelStoreError, arrays_fingerprint, model_store
from acme_flwr.runtime import model_store_dir, remove_run_dirs, shared_feature_dir

from .device_kit import ask, evaluate_message, grid_for, package, setup_message

NODES = (1000, 1007)  # partition-ids 0 and 1 of the in-process grid


def _metrics(reply) -> dict:  # noqa: ANN001
    assert not reply.has_error(), reply.error.reason
    return dict(reply.content[P.METRICS])


def test_two_devices_with_one_package_share_one_stored_copy(tmp_path) -> None:  # noqa: ANN001
    grid, _ = grid_for(tmp_path / "store")
    content, arch = package()
    for node in NODES:
        assert _metrics(ask(grid, setup_message(content, arch, node)))["setup"] == 1
    files = list((tmp_path / "store").glob("*.npz"))
    assert len(files) == 1 and not list((tmp_path / "store").glob("*.tmp*"))
    for context in grid.contexts.values():  # the context keeps the fingerprint, not the backbone
        backbone_keys = set(content[P.BACKBONE])
        assert not any(isinstance(v, ArrayRecord) and backbone_keys & set(v) for v in context.state.values())
        (key,) = [k for k in context.state if k.startswith("acme.backbone.")]
        assert files[0].stem == key.removeprefix("acme.backbone.")
    for node in NODES:
        assert "val-acc" in _metrics(ask(grid, evaluate_message(node)))
    other, arch2 = package(seed=1)  # a second package: a second file
    ask(grid, setup_message(other, arch2, NODES[0], tag="other"))
    assert len(list((tmp_path / "store").glob("*.npz"))) == 2


@pytest.mark.parametrize("damage", ["garbage", "other-content"])
def test_a_damaged_stored_file_is_never_used_and_setup_replaces_it(tmp_path, damage: str) -> None:  # noqa: ANN001
    grid, client = grid_for(tmp_path / "store")
    content, arch = package()
    ask(grid, setup_message(content, arch, NODES[0]))
    before = _metrics(ask(grid, evaluate_message(NODES[0])))
    (path,) = (tmp_path / "store").glob("*.npz")
    if damage == "garbage":
        path.write_bytes(b"not an npz file")
    else:  # a well-formed file whose content is not the fingerprinted one
        store = ModelStore(tmp_path / "elsewhere")
        arrays = {k: np.asarray(v.numpy()) for k, v in content[P.BACKBONE].items()}
        first = next(iter(arrays))
        arrays[first] = arrays[first] + 1
        path.write_bytes(store.put(arrays_fingerprint(arrays), arrays).read_bytes())
    client.store(grid.contexts[NODES[0]]).forget()  # a fresh worker: nothing in memory
    reply = ask(grid, evaluate_message(NODES[0]))
    assert reply.has_error()
    reason = reply.error.reason
    assert reason.startswith("ModelStoreError: model store:") and "\n" not in reason and "not used" in reason
    ask(grid, setup_message(content, arch, NODES[0]))  # the setup message (a resumed run) re-creates it
    client.store(grid.contexts[NODES[0]]).forget()
    assert _metrics(ask(grid, evaluate_message(NODES[0]))) == before


def test_a_restart_without_the_store_fails_clearly_and_setup_recreates_it(tmp_path) -> None:  # noqa: ANN001
    grid, client = grid_for(tmp_path / "store")
    content, arch = package()
    ask(grid, setup_message(content, arch, NODES[0]))
    before = _metrics(ask(grid, evaluate_message(NODES[0])))
    for path in (tmp_path / "store").glob("*.npz"):
        path.unlink()
    client.store(grid.contexts[NODES[0]]).forget()
    reply = ask(grid, evaluate_message(NODES[0]))
    assert reply.has_error() and "no package" in reply.error.reason and "setup message" in reply.error.reason
    ask(grid, setup_message(content, arch, NODES[0]))
    client.store(grid.contexts[NODES[0]]).forget()
    assert _metrics(ask(grid, evaluate_message(NODES[0]))) == before  # the same numbers as before the loss


def test_the_store_checks_what_it_is_given_and_bounds_its_memory(tmp_path) -> None:  # noqa: ANN001
    store = ModelStore(tmp_path, max_entries=2)
    sets = [{"w": np.full((3,), float(i), dtype=np.float32)} for i in range(3)]
    digests = [arrays_fingerprint(s) for s in sets]
    with pytest.raises(ModelStoreError, match="do not match fingerprint"):
        store.put(digests[0], sets[1])
    with pytest.raises(ModelStoreError, match="not a fingerprint"):
        store.get("../etc/passwd")
    for d, s in zip(digests, sets, strict=True):
        store.put(d, s)
    assert store.writes == 3 and len(store._memory) == 2
    assert np.array_equal(store.get(digests[0])["w"], sets[0]["w"]) and store.reads == 1  # evicted: from disk
    store.put(digests[0], sets[0])  # already there and intact: not written again
    assert store.writes == 3
    assert model_store(tmp_path) is model_store(tmp_path)  # one object (one memory cache) per directory


def test_remove_run_dirs_removes_the_store_and_the_shared_grids() -> None:
    run_id = 987_654_321
    for path in (model_store_dir(run_id), shared_feature_dir(run_id)):
        path.mkdir(parents=True, exist_ok=True)
        (path / "x").write_text("x")
    remove_run_dirs(run_id)
    assert not model_store_dir(run_id).exists() and not shared_feature_dir(run_id).exists()
    remove_run_dirs(run_id)  # nothing left: fine
