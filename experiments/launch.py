"""Run the app with ``flwr run . --stream`` the way it works on a bare machine, then report and clean up.

What it takes care of (DESIGN §4): the environment variables Flower needs before its first call
(no runtime dependency installation, no telemetry, no update check), a private ``FLWR_HOME`` and free local
SuperLink ports so a stray SuperLink can never hijack the run, an absolute output directory (the ServerApp runs in
the SuperLink's cwd), 1 CPU per simulated client, and stopping the SuperLink it started. Afterwards it prints the
results table and the absolute path of ``summary.json``; it exits non-zero when the run wrote no summary.

    python -m experiments.launch --out outputs/default --num-supernodes 10 -- strategy.rounds=5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from acme_flwr.results import format_table

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _flower_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_HOME": str(flwr_home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
        "RAY_DEDUP_LOGS": "0",
        # flwr starts `flower-superlink` and `flwr-simulation` by name: they must resolve to this environment's
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    return env


def _processes_with(marker: str) -> list[int]:
    """PIDs whose command line or environment mentions ``marker`` (our private FLWR_HOME)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob:
            pids.append(int(proc.name))
    return pids


def stop_superlink(flwr_home: Path, grace: float = 5.0) -> int:
    """Terminate every process started under our private FLWR_HOME (SuperLink, simulation, Ray); return count."""
    pids = _processes_with(str(flwr_home))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        if not pids:
            break
    return len(pids)


def launch(out: Path, num_supernodes: int, overrides: list[str], app_dir: Path = REPO,
           stream_to: object = None, flwr_home: Path | None = None) -> Path:
    """Run one ``flwr run`` and return the path of its ``summary.json`` (raises if none was written).

    ``flwr_home``: the private FLWR_HOME to use (created if missing, removed afterwards); default: a new temp dir.
    Every process the run starts carries it in its environment, which is how it is found and stopped."""
    out = out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = out / "summary.json"
    if summary.exists():
        summary.unlink()
    flwr_home = Path(flwr_home) if flwr_home else Path(tempfile.mkdtemp(prefix="acme-flwr-home-"))
    flwr_home.mkdir(parents=True, exist_ok=True)
    run_config = out / "run_config.toml"
    pairs = [f'"run.out_dir" = {json.dumps(str(out))}'] + [_toml_pair(o) for o in overrides]
    run_config.write_text("\n".join(pairs) + "\n")
    flwr = Path(sys.executable).with_name("flwr")
    cmd = [str(flwr if flwr.exists() else "flwr"), "run", str(app_dir), "--stream", "--run-config", str(run_config),
           "--federation-config", f"num-supernodes={num_supernodes} client-resources-num-cpus=1"]
    try:
        proc = subprocess.run(cmd, env=_flower_env(flwr_home), cwd=out, stdout=stream_to, stderr=subprocess.STDOUT,
                              check=False)
    finally:
        left = stop_superlink(flwr_home)
        if left:
            print(f"warning: {left} Flower process(es) under {flwr_home} did not stop", file=sys.stderr)
        shutil.rmtree(flwr_home, ignore_errors=True)
    if not summary.exists():
        raise RuntimeError(f"the run wrote no {summary} (flwr exit code {proc.returncode}); see the log above")
    return summary


def _toml_pair(override: str) -> str:
    """``section.key=value`` → a TOML line with a quoted key; bare words become strings."""
    key, sep, value = override.partition("=")
    if not sep:
        raise SystemExit(f"override {override!r} must look like section.key=value")
    value = value.strip()
    try:
        json.loads(value.lower() if value.lower() in {"true", "false"} else value)
        literal = value.lower() if value.lower() in {"true", "false"} else value
    except json.JSONDecodeError:
        literal = json.dumps(value.strip("'\""))
    return f"{json.dumps(key.strip())} = {literal}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "default", help="output directory")
    parser.add_argument("--num-supernodes", type=int, default=None,
                        help="simulated devices (default: topology.num_devices of the overrides, else 10)")
    parser.add_argument("overrides", nargs="*", help="run-config overrides, e.g. partition.alpha=0.1")
    args = parser.parse_args()
    n = args.num_supernodes or next((int(o.split("=", 1)[1]) for o in args.overrides
                                     if o.startswith("topology.num_devices=")), 10)
    if not any(o.startswith("topology.num_devices=") for o in args.overrides):
        args.overrides.append(f"topology.num_devices={n}")
    started = time.time()
    summary = launch(args.out, n, args.overrides)
    data = json.loads(summary.read_text())
    print("\n" + format_table(data))
    failures = sum(b["failures"]["count"] for b in data["strategies"].values())
    print(f"\nwall time {time.time() - started:.1f} s; failed device replies (all strategies): {failures}")
    print(f"summary: {summary}")


if __name__ == "__main__":
    main()
