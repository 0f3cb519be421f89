"""The client contract: what data_fn/profile_fn must return, checked at profile and setup with one clear line."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from acme_flwr import protocol as P
from acme_flwr.task import DeviceContractError, DeviceData, TensorSplit, check_device_data, check_profile

from .device_kit import ask, device_data, grid_for, package, profile_message, setup_message, split

NODE = 1000 + 7 * 3  # partition-id 3


def _with(**changes: object):  # noqa: ANN202
    return lambda c: dataclasses.replace(device_data(int(c.node_config["partition-id"])), **changes)


BROKEN = {
    "flattened images": (_with(train=TensorSplit(torch.randn(12, 64), torch.zeros(12, dtype=torch.long))),
                         "device 3: DeviceData.train.x: expected shape (N, C, H, W)", "got (12, 64)"),
    "float labels": (_with(val=TensorSplit(torch.randn(6, 1, 8, 8), torch.zeros(6))),
                     "device 3: DeviceData.val.y: expected an integer tensor", "got torch.float32"),
    "integer images": (_with(test=TensorSplit(torch.zeros(6, 1, 8, 8, dtype=torch.uint8),
                                              torch.zeros(6, dtype=torch.long))),
                       "device 3: DeviceData.test.x: expected a float tensor", "got torch.uint8"),
    "raw pixels": (_with(train=TensorSplit(torch.full((12, 1, 8, 8), 255.0), torch.zeros(12, dtype=torch.long))),
                   "device 3: DeviceData.train.x: expected normalised images", "got max |x| = 255"),
    "missing split": (_with(val=None), "device 3: DeviceData.val: expected a TensorSplit", "None (missing split)"),
    "label count": (_with(train=TensorSplit(torch.randn(12, 1, 8, 8), torch.zeros(11, dtype=torch.long))),
                    "device 3: DeviceData.train.y: expected shape (12,)", "got (11,)"),
    "not finite": (_with(train=TensorSplit(torch.full((12, 1, 8, 8), float("nan")), torch.zeros(12).long())),
                   "device 3: DeviceData.train.x: expected finite values", "NaN or inf"),
    "empty split": (_with(test=TensorSplit(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))),
                    "device 3: DeviceData.test: expected at least one sample", "an empty split"),
    "not DeviceData": (lambda c: {"train": 1}, "data_fn: expected a DeviceData", "got dict"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_data_fn_is_one_line_naming_device_field_expected_and_given(tmp_path, case: str) -> None:  # noqa: ANN001
    data_fn, expected, given = BROKEN[case]
    grid, _ = grid_for(tmp_path, nodes=4, data_fn=data_fn)
    reply = ask(grid, profile_message(NODE))
    assert reply.has_error()
    reason = reply.error.reason
    assert reason.startswith("DeviceContractError: ") and expected in reason and given in reason, reason
    assert "\n" not in reason and "Traceback" not in reason


def test_setup_checks_the_backbone_shape_and_the_label_range(tmp_path) -> None:  # noqa: ANN001
    content, arch = package()
    wrong_size = _with(**{s: split(6, 0, (1, 16, 16)) for s in ("train", "val", "test")})
    grid, _ = grid_for(tmp_path, nodes=4, data_fn=wrong_size)
    assert not ask(grid, profile_message(NODE)).has_error()  # the profile does not know the backbone yet
    reason = ask(grid, setup_message(content, arch, NODE)).error.reason
    assert "device 3: DeviceData.train.x: expected shape (N, 1, 8, 8)" in reason and "got (6, 1, 16, 16)" in reason
    many = _with(val=TensorSplit(torch.randn(6, 1, 8, 8), torch.arange(6)))
    grid, _ = grid_for(tmp_path, nodes=4, data_fn=many)
    reason = ask(grid, setup_message(content, arch, NODE)).error.reason
    assert "device 3: DeviceData.val.y: expected labels in [0, 3), got labels in [0, 5]" in reason
    assert "acme.setup" not in grid.contexts[NODE].state  # nothing kept from a refused setup


def test_unknown_device_class_is_refused_by_the_device(tmp_path) -> None:  # noqa: ANN001
    grid, _ = grid_for(tmp_path, nodes=4, profile_fn=lambda c: {"device-class": "huge"},
                       run_config={"profile.classes": "low,mid,high"})
    reason = ask(grid, profile_message(NODE)).error.reason
    assert "device 3: profile_fn['device-class']: expected one of ['low', 'mid', 'high'], got 'huge'" in reason
    grid, _ = grid_for(tmp_path, nodes=4, profile_fn=lambda c: {"size-constraint": 0.5})
    assert "expected a non-empty str, got None" in ask(grid, profile_message(NODE)).error.reason


def test_the_profile_reports_what_acme_reads_and_derives_the_raw_size(tmp_path) -> None:  # noqa: ANN001
    grid, _ = grid_for(tmp_path, nodes=4)
    prof = dict(ask(grid, profile_message(NODE)).content[P.PROFILE_REC])
    assert prof == {"device-class": "mid", "partition-id": 3, "num-train": 12, "raw-train-bytes": 12 * (64 + 1)}
    given = dataclasses.replace(device_data(0), raw_train_bytes=7)
    assert given.upload_bytes == 7 and check_device_data(given) is given


def test_the_checker_accepts_the_projects_own_data() -> None:
    from acme_flwr.cloud.models import input_shape
    from acme_flwr.config import AcmeConfig
    from acme_flwr.task import federated_data

    from .conftest import SMOKE

    cfg = AcmeConfig.from_flat(dict(SMOKE))
    data = federated_data(cfg, *input_shape(cfg))
    size, channels = input_shape(cfg)
    for pid in range(cfg.topology.num_devices):
        dev = check_device_data(data.device(pid), image_shape=(channels, size, size), num_classes=data.num_classes)
        assert isinstance(dev, DeviceData) and dev.upload_bytes == dev.raw_train_bytes
    with pytest.raises(DeviceContractError, match="expected a dict"):
        check_profile(["mid"], 0)
