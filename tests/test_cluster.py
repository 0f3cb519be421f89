"""The multi-machine path Flower documents, on loopback: ``ray start --head`` + ``ray start --address`` (two raylets,
each with its own temp dir and ports), the launcher joins it with ``--ray-address``, both nodes run devices, and the
metrics equal a local simulation's. Only the processes this test started are stopped (by the marker in their
environment, never ``ray stop``, which would stop every Ray on the machine). About 4-6 min on 2 shared cores."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiments import procs

REPO = Path(__file__).resolve().parents[1]
ARGS = ["+experiment=smoke", "strategy.rounds=1", "strategy.names=acme,local"]
MARKER_ENV = "ACME_TEST_RAY_CLUSTER"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_start(args: list[str], env: dict[str, str]) -> None:
    ray = Path(sys.executable).with_name("ray")
    cmd = [str(ray) if ray.exists() else "ray", "start", *args, "--disable-usage-stats"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture
def two_raylets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[Path]]]:
    """A head and a second raylet on 127.0.0.1, 1 CPU each, distinct temp dirs and ports; yields the address and
    the temp dirs; stops exactly the processes it started (their environment carries a unique marker)."""
    marker = f"{MARKER_ENV}={uuid.uuid4().hex}"
    # short paths: Ray's unix sockets live under the temp dir (108-byte limit)
    dirs = [Path(f"/tmp/acme-ray-{marker[-8:]}-{i}") for i in (0, 1)]
    bins = {str(Path(sys.executable).parent), str(Path(sys.executable).resolve().parent)}
    env = {**os.environ, MARKER_ENV: marker.split("=", 1)[1], "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": os.pathsep.join([os.environ.get("PATH", ""), *sorted(bins)])}
    env.pop("RAY_ADDRESS", None)
    gcs, client, *ports = _free_ports(2 + 2 * 6)
    try:
        for i, d in enumerate(dirs):
            node, obj, agent, listen, metrics, renv = ports[6 * i:6 * i + 6]
            common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", f"--temp-dir={d}", f"--node-manager-port={node}",
                      f"--object-manager-port={obj}", f"--dashboard-agent-grpc-port={agent}",
                      f"--dashboard-agent-listen-port={listen}", f"--metrics-export-port={metrics}",
                      f"--runtime-env-agent-port={renv}", "--object-store-memory=200000000"]
            if i == 0:
                _ray_start(["--head", f"--port={gcs}", f"--ray-client-server-port={client}",
                            "--include-dashboard=false", *common], env)
            else:
                _ray_start([f"--address=127.0.0.1:{gcs}", *common], env)
        yield f"127.0.0.1:{gcs}", dirs
    finally:
        left = procs.reap(marker.split("=", 1)[1], grace=10.0)
        for d in dirs:
            subprocess.run(["rm", "-rf", str(d)], check=False)
        assert not left, f"processes of the test cluster survived: {left}"


def _summary(path: Path) -> dict:
    data = json.loads((path / "summary.json").read_text())
    return {name: {"per_device": block["accuracy"]["personalized"]["per_device"], "bytes": block["bytes"]["total"],
                   "failures": block["failures"]["count"]} for name, block in data["strategies"].items()}


def _actors_on(temp_dir: Path) -> int:
    """ClientAppActor workers a node ran (Ray names an actor's worker in its log files' first lines)."""
    logs = list(temp_dir.glob("session_*/logs/worker-*.out")) + list(temp_dir.glob("session_*/logs/worker-*.err"))
    return sum("ClientAppActor" in f.read_text(errors="replace")[:4000] for f in logs)


@pytest.mark.e2e
def test_a_run_across_two_raylets_uses_both_nodes_and_equals_the_local_simulation(
        two_raylets: tuple[str, list[Path]], tmp_path: Path) -> None:
    address, dirs = two_raylets
    bins = {str(Path(sys.executable).parent), str(Path(sys.executable).resolve().parent)}
    env = {**os.environ, "ACME_CACHE_DIR": str(tmp_path / "cache"),
           "PATH": os.pathsep.join([os.environ.get("PATH", ""), *sorted(bins)])}
    env.pop("RAY_ADDRESS", None)
    cluster = subprocess.run([sys.executable, "-m", "experiments.launch", "--out", str(tmp_path / "cluster"),
                              "--ray-address", address, *ARGS], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=900)
    assert cluster.returncode == 0, cluster.stdout[-3000:] + cluster.stderr[-3000:]
    line = next(ln for ln in cluster.stderr.splitlines() + cluster.stdout.splitlines() if ln.startswith("Ray cluster"))
    assert line.startswith(f"Ray cluster {address}: 2 nodes, 2 CPUs (") and line.count(" 1 CPU [") == 2, line
    assert all(_actors_on(d) >= 1 for d in dirs), [_actors_on(d) for d in dirs]
    local = subprocess.run([sys.executable, "-m", "experiments.launch", "--out", str(tmp_path / "local"), *ARGS],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    a, b = _summary(tmp_path / "cluster"), _summary(tmp_path / "local")
    assert a == b and all(s["failures"] == 0 for s in a.values())
