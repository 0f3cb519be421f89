"""Feature skew: rotation and noise transforms, domain assignment relative to mixing groups, the registry."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from acme_flwr.shift import (
    DeviceShift,
    list_domain_assignments,
    list_feature_shifts,
    mixing_shortfalls,
    plan_shifts,
    rotate,
)


def test_registries_list_every_choice() -> None:
    assert list_feature_shifts() == ["noise", "none", "rotation"]
    assert list_domain_assignments() == ["by_class", "by_edge", "paired", "round_robin"]


def test_rotation_by_quarters_is_exact_and_counter_clockwise() -> None:
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    assert torch.equal(rotate(x, 90), torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(rotate(x, 180), torch.flip(x, dims=(2, 3)))
    assert torch.equal(rotate(rotate(x, 270), 90), x)
    img = torch.zeros(1, 1, 3, 3)
    img[0, 0, 0, 2] = 1.0  # top right
    assert rotate(img, 90)[0, 0, 0, 0] == 1.0  # counter-clockwise: top right goes to top left


def test_other_angles_rotate_about_the_centre_and_fill_with_the_background() -> None:
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0  # the centre stays
    bg = torch.tensor([-1.0])
    out = rotate(x, 45, bg)
    assert out[0, 0, 4, 4] == pytest.approx(1.0, abs=1e-5)
    assert out[0, 0, 0, 0] == pytest.approx(-1.0)  # an exposed corner is "black", not 0
    i, j = torch.meshgrid(torch.arange(15.0), torch.arange(15.0), indexing="ij")
    a = (0.3 * i + 0.7 * j).view(1, 1, 15, 15)  # a ramp: bilinear resampling reproduces it exactly inside
    twice = rotate(rotate(a, 45), 45)
    inner = (slice(None), slice(None), slice(5, 10), slice(5, 10))  # near the centre, away from the corners
    assert torch.allclose(twice[inner], torch.rot90(a, 1, dims=(2, 3))[inner], atol=1e-3)
    assert not torch.allclose(twice[inner], torch.rot90(a, -1, dims=(2, 3))[inner], atol=1.0)  # the same sense
    assert torch.allclose(rotate(a, 60, None), rotate(a, 60 + 360, None), atol=1e-5)


def test_noise_is_seeded_per_split_and_has_the_asked_std() -> None:
    shift = DeviceShift(noise_std=0.5, seed=7)
    x = torch.zeros(200, 1, 10, 10)
    train = shift.apply(x, torch.zeros(1), "train")
    assert torch.equal(train, shift.apply(x, torch.zeros(1), "train"))  # the same images in every process
    assert not torch.equal(train, shift.apply(x, torch.zeros(1), "test"))  # independent noise per split
    assert float(train.std()) == pytest.approx(0.5, rel=0.05)
    assert DeviceShift().is_identity and not shift.is_identity and shift.describe() == "noise 0.5"


def test_noise_plan_follows_sigma_i_over_n() -> None:
    shifts = plan_shifts("noise", [(0, 0)] * 5, seed=1, noise_sigma=0.2)
    assert [s.noise_std for s in shifts] == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16])
    assert len({s.seed for s in shifts}) == 5
    assert [s.seed for s in plan_shifts("noise", [(0, 0)] * 5, seed=1)] == [s.seed for s in shifts]
    assert all(s.rotation == 0 for s in shifts)


def _groups(num_devices: int, edges: int, classes: int) -> list[tuple[int, int]]:
    return [(p % edges, p % classes) for p in range(num_devices)]  # round-robin edges and classes, as the config


@pytest.mark.parametrize(("devices", "edges", "classes", "domains"), [(12, 1, 3, 4), (12, 1, 3, 2), (24, 2, 3, 4),
                                                                     (4, 1, 1, 2), (15, 1, 3, 3)])
def test_paired_gives_every_mixing_group_two_devices_of_two_domains(devices: int, edges: int, classes: int,
                                                                    domains: int) -> None:
    groups = _groups(devices, edges, classes)
    shifts = plan_shifts("rotation", groups, seed=0, rotation_groups=domains)
    found = [s.domain for s in shifts]
    assert mixing_shortfalls(found, groups) == []
    assert set(found) == set(range(domains)) or len(set(groups)) * 2 < domains
    assert [s.rotation for s in shifts] == [d * 360.0 / domains for d in found]


def test_too_small_mixing_groups_are_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    groups = _groups(9, 1, 3)  # 3 devices per group: two domains cannot both have two
    with caplog.at_level(logging.WARNING, logger="acme_flwr.shift"):
        plan_shifts("rotation", groups, seed=0, rotation_groups=2)
    assert "3 of 3 mixing groups" in caplog.text and "edge 0 / class 1" in caplog.text


@pytest.mark.parametrize(("assignment", "expected"), [
    ("round_robin", [p % 4 for p in range(12)]),
    ("by_edge", [p % 2 for p in range(12)]),  # edges p % 2
    ("by_class", [p % 3 for p in range(12)]),  # classes p % 3
])
def test_other_domain_assignments(assignment: str, expected: list[int]) -> None:
    shifts = plan_shifts("rotation", _groups(12, 2, 3), seed=0, rotation_groups=4, domain_assignment=assignment)
    assert [s.domain for s in shifts] == expected


def test_by_edge_makes_mixing_groups_domain_pure() -> None:
    groups = _groups(12, 2, 3)
    domains = [s.domain for s in plan_shifts("rotation", groups, seed=0, rotation_groups=2,
                                             domain_assignment="by_edge")]
    assert len(mixing_shortfalls(domains, groups)) == len(set(groups))


def test_none_is_the_identity() -> None:
    assert all(s.is_identity and s.describe() == "-" for s in plan_shifts("none", _groups(5, 1, 1), seed=0))
    assert np.unique([s.domain for s in plan_shifts("none", _groups(5, 1, 1), seed=0)]).tolist() == [0]
