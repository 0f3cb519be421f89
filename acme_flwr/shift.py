"""Feature skew: per-device transforms of the images, over any partition (NIID-Bench's feature distribution skew).

A registered feature shift (``FEATURE_SHIFTS``, ``partition.feature``) plans one :class:`DeviceShift` per device;
``FederatedData`` applies it alike to the device's train, val and test images and never to the cloud's data (the
cloud does not know the devices' domains):

- ``none``: the images as they are.
- ``noise``: device i of N adds Gaussian noise of std ``noise_sigma``·i/N to its normalised images (device 0 clean),
  drawn once per image from a seed of (run seed, device, split), so every process builds the same images.
- ``rotation``: domain shift, IFCA-style: devices in R = ``rotation_groups`` domains, domain g sees its images
  rotated by g·360°/R (multiples of 90° exactly, other angles bilinear with black corners). Which device gets which
  domain is a registered ``DOMAIN_ASSIGNMENTS`` choice relative to the topology's mixing groups (the devices of one
  edge with the same device class, which share a package and mix importance with each other).

"Mixed" skew is a label or quantity partition with a feature shift, e.g. ``kind=dirichlet feature=rotation``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from acme_flwr.registry import Registry

logger = logging.getLogger(__name__)

#: split name -> noise stream, so a device's train, val and test images get independent noise
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class DeviceShift:
    """What one device's images undergo, alike in its train, val and test splits."""

    domain: int = 0
    rotation: float = 0.0  # degrees, counter-clockwise
    noise_std: float = 0.0  # on the normalised model input
    seed: int = 0  # the noise seed (already specific to the device)

    @property
    def is_identity(self) -> bool:
        return self.rotation % 360 == 0 and self.noise_std == 0

    def describe(self) -> str:
        """A short label for reports: ``rot 90`` / ``noise 0.05`` / ``-``."""
        parts = ([f"rot {self.rotation:g}"] if self.rotation % 360 else []) + (
            [f"noise {self.noise_std:.3g}"] if self.noise_std else [])
        return ", ".join(parts) or "-"

    def apply(self, x: torch.Tensor, background: torch.Tensor, split: str) -> torch.Tensor:
        """``x`` (N, C, H, W) normalised: rotated (corners filled with ``background``, the normalised value of a black
        pixel per channel), then noised from a generator seeded by (seed, split)."""
        if self.rotation % 360:
            x = rotate(x, self.rotation, background)
        if self.noise_std:
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, SPLIT_STREAMS[split]])
                                                    .generate_state(1)[0]))
            x = x + self.noise_std * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        return x


def rotate(x: torch.Tensor, degrees: float, background: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate images (N, C, H, W) counter-clockwise by ``degrees``: exact for multiples of 90° on square images,
    else bilinear about the centre with the exposed corners set to ``background`` (per channel; default 0)."""
    quarter = degrees / 90.0
    if quarter == round(quarter) and x.shape[-1] == x.shape[-2]:
        return torch.rot90(x, int(round(quarter)) % 4, dims=(2, 3))
    bg = torch.zeros(x.shape[1]) if background is None else background
    bg = bg.to(x.dtype).view(1, -1, 1, 1)
    rad = math.radians(degrees)
    # affine_grid maps output to input coordinates (x right, y down): a counter-clockwise turn of the picture
    theta = torch.tensor([[math.cos(rad), -math.sin(rad), 0.0], [math.sin(rad), math.cos(rad), 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x - bg, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + bg


# ----------------------------------------------------------------------------------------------- domain assignment
MixingGroup = tuple[int, int]  # (edge, device class index)
DomainAssignment = Callable[[list[MixingGroup], int], list[int]]
DOMAIN_ASSIGNMENTS: Registry[DomainAssignment] = Registry("domain assignment")


def list_domain_assignments() -> list[str]:
    return DOMAIN_ASSIGNMENTS.names()


@DOMAIN_ASSIGNMENTS.register("paired")
def paired(groups: list[MixingGroup], num_domains: int) -> list[int]:
    """Inside each mixing group (sorted by partition-id) devices take domains two by two, the k-th group (in sorted
    order) starting at domain k: a group of >= 4 devices has at least two devices of each of at least two domains,
    and across groups every domain is used."""
    domains = [0] * len(groups)
    for k, key in enumerate(sorted(set(groups))):
        members = [pid for pid, g in enumerate(groups) if g == key]
        for rank, pid in enumerate(members):
            domains[pid] = (k + rank // 2) % num_domains
    return domains


@DOMAIN_ASSIGNMENTS.register("round_robin")
def round_robin(groups: list[MixingGroup], num_domains: int) -> list[int]:
    """Domain = partition-id mod R (IFCA's plain split; ignores the topology)."""
    return [pid % num_domains for pid in range(len(groups))]


@DOMAIN_ASSIGNMENTS.register("by_edge")
def by_edge(groups: list[MixingGroup], num_domains: int) -> list[int]:
    """Domain = edge mod R: every edge is one domain (e.g. a region), so mixing groups are domain-pure."""
    return [edge % num_domains for edge, _ in groups]


@DOMAIN_ASSIGNMENTS.register("by_class")
def by_class(groups: list[MixingGroup], num_domains: int) -> list[int]:
    """Domain = device class index mod R: every package serves one domain."""
    return [cls % num_domains for _, cls in groups]


def mixing_shortfalls(domains: list[int], groups: list[MixingGroup]) -> list[str]:
    """The mixing groups that lack at least two devices of each of at least two domains (where similarity weighting
    has nothing to tell apart), as ``edge e / class c: {domain: devices}`` strings."""
    short = []
    for key in sorted(set(groups)):
        counts: dict[int, int] = {}
        for pid, g in enumerate(groups):
            if g == key:
                counts[domains[pid]] = counts.get(domains[pid], 0) + 1
        if sum(1 for n in counts.values() if n >= 2) < 2:
            short.append(f"edge {key[0]} / class {key[1]}: {dict(sorted(counts.items()))}")
    return short


# ----------------------------------------------------------------------------------------------- feature shifts
FeatureShift = Callable[..., list[DeviceShift]]
FEATURE_SHIFTS: Registry[FeatureShift] = Registry("feature shift")


def list_feature_shifts() -> list[str]:
    return FEATURE_SHIFTS.names()


def plan_shifts(kind: str, groups: list[MixingGroup], seed: int, **params: Any) -> list[DeviceShift]:
    """One :class:`DeviceShift` per device (``groups[pid]`` is device pid's mixing group) by the registered ``kind``."""
    return FEATURE_SHIFTS.get(kind)(groups, seed, **params)


@FEATURE_SHIFTS.register("none")
def no_shift(groups: list[MixingGroup], seed: int, **_: Any) -> list[DeviceShift]:
    return [DeviceShift() for _ in groups]


@FEATURE_SHIFTS.register("noise")
def noise(groups: list[MixingGroup], seed: int, noise_sigma: float = 0.1, **_: Any) -> list[DeviceShift]:
    """NIID-Bench's noise-based feature skew: device i of N adds N(0, (sigma·i/N)²) noise; device 0 is clean."""
    n = len(groups)
    return [DeviceShift(noise_std=noise_sigma * i / n, seed=int(np.random.SeedSequence([seed, 29, i])
                                                                .generate_state(1)[0])) for i in range(n)]


@FEATURE_SHIFTS.register("rotation")
def rotation(groups: list[MixingGroup], seed: int, rotation_groups: int = 4, domain_assignment: str = "paired",
             **_: Any) -> list[DeviceShift]:
    """IFCA's rotated domains: domain g rotated by g·360°/R; domains by ``domain_assignment``. Warns when a mixing
    group lacks two devices of each of two domains."""
    if rotation_groups < 1:
        raise ValueError(f"partition.rotation_groups={rotation_groups} must be >= 1")
    domains = DOMAIN_ASSIGNMENTS.get(domain_assignment)(groups, rotation_groups)
    short = mixing_shortfalls(domains, groups)
    if short and rotation_groups > 1:
        logger.warning("feature=rotation: %d of %d mixing groups lack two devices of each of two domains (%s); "
                       "similarity weighting cannot tell domains apart there: use >= 4 devices per (edge, device "
                       "class) with domain_assignment=paired", len(short), len(set(groups)), "; ".join(short))
    return [DeviceShift(domain=g, rotation=g * 360.0 / rotation_groups) for g in domains]
