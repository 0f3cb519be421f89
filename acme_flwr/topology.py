"""Topology: which edge serves which device, and what each device is (its class and size budget)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    """E edges over N devices; ``round_robin`` puts device p on edge p % E, ``contiguous`` on edge p·E // N."""

    num_devices: int
    num_edges: int
    assignment: str = "round_robin"
    edge_rounds_per_cloud: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.num_edges <= self.num_devices:
            raise ValueError(f"need 1 <= num_edges ({self.num_edges}) <= num_devices ({self.num_devices})")
        if self.assignment not in {"round_robin", "contiguous"}:
            raise ValueError(f"assignment={self.assignment!r}; allowed: ['contiguous', 'round_robin']")

    def edge_of(self, partition_id: int) -> int:
        if self.assignment == "round_robin":
            return partition_id % self.num_edges
        return partition_id * self.num_edges // self.num_devices

    def devices_of(self, edge: int, partition_ids: list[int] | None = None) -> list[int]:
        pids = range(self.num_devices) if partition_ids is None else partition_ids
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
