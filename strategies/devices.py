"""DeviceTable: which node holds which partition-id, each device's profile, and how many devices a run expects.

Flower's node ids are random; everything in a strategy is keyed by partition-id (sorted, so runs are deterministic).
The table is filled at discovery, loses the devices that fail setup and, where the rounds policy allows it, gains
the nodes that connect later (FedAvg samples whoever is connected).
"""

from __future__ import annotations

from typing import Any

from acme_flwr.topology import Topology


class DeviceTable:
    """Partition-id ↔ node id, the devices' profiles and the expected device count."""

    def __init__(self, fixed: int | None = None) -> None:
        """``fixed``: the topology's device count when the run fixes it (None: whatever connects)."""
        self.node_of: dict[int, int] = {}  # partition-id -> node id
        self.pid_of: dict[int, int] = {}  # node id -> partition-id
        self.profiles: dict[int, dict[str, Any]] = {}
        self.nodes_seen = 0  # nodes connected at discovery
        self.fixed = fixed

    def bind(self, pid: int, node: int, profile: dict[str, Any]) -> None:
        """Device ``pid`` lives on ``node`` with ``profile``."""
        self.node_of[pid] = node
        self.pid_of[node] = pid
        self.profiles[pid] = profile

    def unbind(self, pid: int) -> None:
        """Device ``pid`` takes no further part (it failed setup); its profile stays for the books."""
        self.pid_of.pop(self.node_of.pop(pid), None)

    def clear(self) -> None:
        self.node_of.clear()
        self.pid_of.clear()
        self.profiles.clear()

    def join(self, nodes: list[int]) -> list[int]:
        """Bind the nodes not seen before to the next partition-ids; returns the new partition-ids."""
        new = []
        for node in sorted(set(nodes) - set(self.pid_of)):
            pid = max(self.node_of, default=-1) + 1
            self.bind(pid, node, {"partition-id": pid})
            new.append(pid)
        return new

    def expected(self) -> int:
        """The fixed device count, else every node seen at discovery (a rejected one included)."""
        if self.fixed is not None:
            return self.fixed
        return max(self.nodes_seen, max(self.node_of, default=-1) + 1, len(self.node_of))

    def bound(self, topology: Topology) -> Topology:
        """``topology`` with its device count fixed to the discovered devices when it was left open."""
        n = max(self.node_of, default=-1) + 1
        if topology.num_devices is not None:
            return topology
        if n < topology.num_edges:
            raise ValueError(f"topology has {topology.num_edges} edges but only {n} devices connected")
        return topology.with_devices(n)
