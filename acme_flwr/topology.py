"""Topology: which edge serves which device, and what each device is (its class and size budget)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    """E edges over N devices; ``round_robin`` puts device p on edge p % E, ``contiguous`` on edge p·E // N.

    ``num_devices`` may be left out (``Topology(num_edges=2, edge_rounds_per_cloud=2)``): the strategy then binds it
    to the devices that connect (:meth:`with_devices`). The default is one edge that reports every round, i.e.
    plain FedAvg."""

    num_devices: int | None = None
    num_edges: int = 1
    assignment: str = "round_robin"
    edge_rounds_per_cloud: int = 1

    def __post_init__(self) -> None:
        if self.num_edges < 1 or (self.num_devices is not None and self.num_edges > self.num_devices):
            raise ValueError(f"need 1 <= num_edges ({self.num_edges}) <= num_devices ({self.num_devices})")
        if self.assignment not in {"round_robin", "contiguous"}:
            raise ValueError(f"assignment={self.assignment!r}; allowed: ['contiguous', 'round_robin']")
        if self.edge_rounds_per_cloud < 1:
            raise ValueError(f"edge_rounds_per_cloud={self.edge_rounds_per_cloud}; must be >= 1")

    def with_devices(self, num_devices: int) -> Topology:
        """This topology over ``num_devices`` devices (itself when the count is already fixed)."""
        if self.num_devices is not None:
            return self
        return dataclasses.replace(self, num_devices=max(num_devices, self.num_edges))

    def edge_of(self, partition_id: int) -> int:
        if self.assignment == "round_robin":
            return partition_id % self.num_edges
        if self.num_devices is None:
            raise ValueError("contiguous assignment needs num_devices (call with_devices once devices are known)")
        return min(partition_id * self.num_edges // self.num_devices, self.num_edges - 1)

    def devices_of(self, edge: int, partition_ids: list[int] | None = None) -> list[int]:
        if partition_ids is None and self.num_devices is None:
            raise ValueError("devices_of needs partition_ids when num_devices is not fixed")
        pids = range(self.num_devices or 0) if partition_ids is None else partition_ids
        return sorted(p for p in pids if self.edge_of(p) == edge)

    def is_cloud_round(self, server_round: int) -> bool:
        """Edges report to the cloud every ``edge_rounds_per_cloud`` rounds."""
        return server_round % self.edge_rounds_per_cloud == 0


@dataclass(frozen=True)
class DeviceProfile:
    """What a device reports in the profile query: its class and normalised model-size budget."""

    partition_id: int
    device_class: str
    size_constraint: float


def device_profile(partition_id: int, classes: list[tuple[str, float]]) -> DeviceProfile:
    """Device p belongs to class ``classes[p % len(classes)]`` (a stand-in for a real device's self-report)."""
    name, budget = classes[partition_id % len(classes)]
    return DeviceProfile(partition_id, name, budget)
