"""Run the app with ``flwr run . --stream`` the way it works on a bare machine, then report and clean up.

    python -m experiments.launch --out outputs/default +experiment=smoke strategy.rounds=5

1. **Fail fast.** Overrides (Hydra syntax, the same as ``experiments.sweep``: ``section.key=value``,
   ``group=option``, ``+experiment=name``) are composed on ``conf/`` and the whole config is validated before
   anything starts; an unknown key (with the nearest valid one), a bad value, a duplicate key or a refused resume
   prints one line and exits with status 2.
2. **Nothing lost.** Nothing in the output directory is written or removed before the config is accepted (a refused
   resume leaves it byte-identical); success is a ``summary.json`` written by this run that holds every configured
   strategy (a run that failed after some strategies finished keeps theirs, and fails).
3. **Processes.** A private ``FLWR_HOME`` and free ports; the launcher starts the local SuperLink itself, in its own
   process group with a parent-death signal, plus a watchdog (``experiments/procs.py``) that stops everything the
   launch started and removes ``FLWR_HOME`` when the launcher ends in any way (SIGINT, SIGTERM, SIGKILL).

4. **FAB.** ``flwr run`` gets a snapshot of the app's files (:func:`snapshot`), not the checkout with its ``.venv``.
5. **A dead worker.** With ``run.on_lost_devices=resume``, a run the ServerApp stopped because a Ray worker died is
   relaunched from its checkpoints in a fresh SuperLink and simulation (one line each time, at most
   ``run.max_restarts`` times); its summary lists the deaths under ``restarts``.

Flower gets the environment it needs before its first call (no runtime dependency installation, no telemetry, no
update check), an absolute output directory (the ServerApp runs in the SuperLink's cwd) and 1 CPU per client.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from acme_flwr.config import AcmeConfig, ConfigError
from acme_flwr.results import format_table, lost_device_lines
from acme_flwr.worker_death import read_deaths, restart_line

from . import procs
from .runconfig import CONF_DIR, check_resume, compose, toml_lines

REPO = Path(__file__).resolve().parents[1]
SUPERLINK_STARTUP_TIMEOUT = 30.0
logger = logging.getLogger(__name__)
_processes_with = procs.processes_with  # kept for experiments.bench_scale


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
        # idle OpenMP threads sleep instead of spinning: on a loaded machine a spinning thread waits for its partner's
        # time slice at every barrier (measured: 2-thread training steps 58x slower at load 30 on 2 cores); the
        # work split, and so every float, is the same
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        # flwr starts `flower-superlink` and `flwr-simulation` by name: they must resolve to this environment's
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    return env


def _tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else name


def stop_superlink(flwr_home: Path, grace: float = 5.0) -> int:
    """Terminate every process started under a private FLWR_HOME (SuperLink, simulation, Ray); return survivors."""
    return len(procs.reap(str(flwr_home), grace=grace))


def prepare(out: Path, num_supernodes: int | None = None, overrides: Sequence[str] = (),
            cfg: AcmeConfig | None = None, conf_dir: Path = CONF_DIR) -> AcmeConfig:
    """Compose and validate the run's config, output directory and resume included; raise ConfigError; write nothing.

    ``num_supernodes`` sets ``topology.num_devices`` unless an override names it (then the two must agree)."""
    out = out.expanduser().resolve()
    explicit = {o.split("=", 1)[0].lstrip("+") for o in overrides}
    if cfg is None:
        cfg = compose(list(overrides), conf_dir)
    if cfg.run.out_dir and Path(cfg.run.out_dir).expanduser().resolve() != out:
        raise ConfigError(f"run.out_dir={cfg.run.out_dir!r} differs from the launcher's output directory {out}; "
                          "give one of them")
    flat = cfg.to_flat()
    flat["run.out_dir"] = str(out)
    if num_supernodes is not None and num_supernodes != cfg.topology.num_devices:
        if "topology.num_devices" in explicit:
            raise ConfigError(f"--num-supernodes={num_supernodes} but topology.num_devices="
                              f"{cfg.topology.num_devices}; give one of them")
        flat["topology.num_devices"] = num_supernodes
    cfg = AcmeConfig.from_flat(flat)  # re-validated with the launcher's own values
    if out.exists() and not out.is_dir():
        raise ConfigError(f"run.out_dir={str(out)!r} exists and is not a directory")
    check_resume(cfg, out)
    preflight(cfg)
    return cfg


# data sets read from data.root (a missing one is reported before anything starts); others ship with a package
_LOCAL_DATA = ("cifar100", "fashion_mnist")


def preflight(cfg: AcmeConfig) -> None:
    """Local data and weights the run will read exist: one-line ConfigError naming what to put where, before any
    process starts (the ServerApp would otherwise find out after the SuperLink and Ray are up)."""
    from acme_flwr import accel
    from acme_flwr import data as acme_data
    from acme_flwr.cloud.elastic_vit import _WEIGHT_FILES
    from acme_flwr.data import DataNotFoundError, load_dataset

    accel.resolve_device(cfg.run.device)  # run.device=cuda without a visible CUDA device: one line, nothing started
    accel.resolve_threads(cfg.run.threads)
    if cfg.model.pretrained_path:
        path = Path(cfg.model.pretrained_path).expanduser()
        if not (path / "config.json").is_file() or not any((path / f).is_file() for f in _WEIGHT_FILES):
            raise ConfigError(f"model.pretrained_path={cfg.model.pretrained_path!r} is not a save_pretrained "
                              f"directory: it needs config.json and one of {list(_WEIGHT_FILES)} (e.g. "
                              "google/vit-base-patch16-224 saved with save_pretrained); nothing is downloaded")
    if cfg.data.name in _LOCAL_DATA:
        try:
            load_dataset(cfg.data.name, cfg.data.root, cfg.run.seed)
        except DataNotFoundError as exc:
            raise ConfigError(str(exc).splitlines()[0]) from None
    elif cfg.data.name == "imagefolder" and not Path(cfg.data.root).expanduser().is_dir():
        raise ConfigError(f"data.root={cfg.data.root!r} is not a directory; an ImageFolder needs root/<class>/<image>")
    # CALL SITE for corrupt or truncated data/image/weights files (acme_flwr.data.check_data_files, one line naming
    # the file and the fix): called as soon as that function exists
    check_data_files = getattr(acme_data, "check_data_files", None)
    if check_data_files is not None:
        try:
            check_data_files(cfg)
        except DataNotFoundError as exc:
            raise ConfigError(str(exc).splitlines()[0]) from None


class _Launch:
    """The processes of one launch: watchdog, SuperLink, ``flwr run``; ``close()`` stops them all."""

    def __init__(self, flwr_home: Path | None) -> None:
        self.home = Path(flwr_home) if flwr_home else Path(tempfile.mkdtemp(prefix="acme-flwr-home-"))
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = _flower_env(self.home)
        read_end, write_end = os.pipe()
        self.watchdog = subprocess.Popen([sys.executable, str(Path(procs.__file__)), str(self.home)], stdin=read_end,
                                         stdout=subprocess.DEVNULL, start_new_session=True)
        os.close(read_end)
        self._pipe: IO[str] | None = os.fdopen(write_end, "w", buffering=1)
        self.pgids: list[int] = []
        self.superlink: subprocess.Popen[bytes] | None = None

    def spawn(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in a new process group that dies with this thread and is registered with the watchdog."""
        proc = subprocess.Popen(cmd, env=self.env, start_new_session=True, preexec_fn=procs.die_with_parent(),
                                **kwargs)
        self.pgids.append(proc.pid)
        if self._pipe is not None:
            self._pipe.write(f"pgid {proc.pid}\n")
        return proc

    def start_superlink(self) -> None:
        """Start the local SuperLink ``flwr run`` would start (same flags), ours to stop; wait for its health check."""
        runtime = self.home / "local-superlink"
        runtime.mkdir(parents=True, exist_ok=True)
        port = self.env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
        log = runtime / "superlink.log"
        self.superlink = self.spawn(
            [_tool("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
             "--control-api-address", f"127.0.0.1:{self.env['FLWR_LOCAL_CONTROL_API_PORT']}", "--host", "127.0.0.1",
             "--port", port, "--log-file", str(log), "--database", str(runtime / "state.db")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + SUPERLINK_STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.superlink.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
                raise RuntimeError(f"flower-superlink exited with code {self.superlink.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as resp:
                    if resp.status == 200:
                        logger.info("SuperLink up: pid %d (process group %d), FLWR_HOME %s", self.superlink.pid,
                                    self.superlink.pid, self.home)
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"flower-superlink did not answer on port {port} within {SUPERLINK_STARTUP_TIMEOUT:.0f} s")

    def close(self) -> None:
        """Hand over to the watchdog (EOF) and wait for it; clean up in-process if it cannot."""
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        try:
            self.watchdog.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.watchdog.kill()
        if procs.reap(str(self.home), self.pgids, grace=1.0) or self.home.exists():  # normally a no-op
            left = procs.cleanup(self.home, self.pgids)
            if left:
                logger.warning("%d Flower process(es) under %s did not stop: %s", len(left), self.home, left)


APP_PARTS = ("acme_flwr/", "strategies/", "clients/", "conf/")  # with pyproject.toml: what the FAB needs


def snapshot(src: Path = REPO, parent: Path | None = None) -> Path:
    """Copy the app's files (the packages, Hydra's ``conf/`` and ``pyproject.toml``, tracked or untracked but not
    ignored) from the checkout ``src`` to a new temp dir (under ``parent`` if given), which the caller removes."""
    dst = Path(tempfile.mkdtemp(prefix="acme-snapshot-", dir=parent))
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=src,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (rel.startswith(APP_PARTS) or rel == "pyproject.toml") and (src / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
    return dst


@contextmanager
def fab_source(app_dir: Path, parent: Path | None = None) -> Iterator[Path]:
    """The directory ``flwr run`` builds the FAB from: a snapshot of the app when ``app_dir`` is a git checkout (Flower
    reads every file under it, ``.venv`` and ``outputs/`` included, before filtering: ~9 s per run here), else
    ``app_dir`` itself (already a snapshot or a bare app). ``parent``: where the snapshot goes (a launch puts it in
    its FLWR_HOME, which its watchdog removes even when the launcher is killed)."""
    if not (app_dir / ".git").exists():
        yield app_dir
        return
    fab = snapshot(app_dir, parent)
    try:
        yield fab
    finally:
        shutil.rmtree(fab, ignore_errors=True)


def ray_cluster(address: str) -> list[dict[str, Any]]:
    """The live nodes of the Ray cluster at ``address`` (IP, node id, CPUs); RuntimeError naming the address if
    none answers. Connects as a short-lived driver and disconnects."""
    import ray

    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=False)
    except Exception as exc:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, ValueError
        raise RuntimeError(f"no Ray cluster answers at {address!r} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); start one with `ray start --head`, "
                           "or leave out --ray-address / RAY_ADDRESS for a local simulation") from None
    try:
        return [{"ip": n["NodeManagerAddress"], "node_id": n["NodeID"], "cpus": n["Resources"].get("CPU", 0.0)}
                for n in ray.nodes() if n.get("Alive")]
    finally:
        ray.shutdown()


def cluster_line(address: str, nodes: list[dict[str, Any]]) -> str:
    """``Ray cluster 127.0.0.1:6379: 2 nodes, 2 CPUs (127.0.0.1 1 CPU [ab12cd34], ...)``."""
    parts = ", ".join(f"{n['ip']} {n['cpus']:g} CPU [{n['node_id'][:8]}]" for n in nodes)
    return (f"Ray cluster {address}: {len(nodes)} node{'s' * (len(nodes) != 1)}, "
            f"{sum(n['cpus'] for n in nodes):g} CPUs ({parts})")


def launch(out: Path, num_supernodes: int | None = None, overrides: Sequence[str] = (), app_dir: Path = REPO,
           stream_to: Any = None, flwr_home: Path | None = None, *, cfg: AcmeConfig | None = None,
           client_cpus: int = 1, ray_address: str | None = None) -> Path:
    """Validate, then run one ``flwr run`` and return the path of its ``summary.json`` (raises if none was written).

    ``overrides`` are composed on ``app_dir``'s ``conf/`` (or a ready ``cfg`` is used); ConfigError leaves
    ``out`` untouched. ``flwr_home``: the private FLWR_HOME (created if missing, removed afterwards); default a
    new temp dir. ``client_cpus``: CPUs per simulated device (Ray runs cores / client_cpus workers at once).
    ``ray_address`` (default ``$RAY_ADDRESS``): run the simulation's devices on that existing Ray cluster (its nodes
    and CPUs are logged first) instead of a Ray instance of its own. Every process the run starts is stopped when
    this returns or the calling process ends; an existing cluster is left running.

    With ``run.on_lost_devices=resume``, a run the ServerApp stopped because a simulation worker died (it recorded
    the death in ``<out>/worker_deaths.jsonl``) is relaunched in a fresh SuperLink and simulation with
    ``run.resume=true``, after one WARNING line naming the strategy, round, devices and worker, at most
    ``run.max_restarts`` times (then RuntimeError)."""
    out, cfg, run_config, written = accept_run(out, num_supernodes, overrides, cfg, app_dir)
    ray_address = ray_address or os.environ.get("RAY_ADDRESS") or None
    if ray_address:
        logger.info("%s", cluster_line(ray_address, ray_cluster(ray_address)))
    resume_on_death = cfg.run.on_lost_devices == "resume"
    max_restarts = cfg.run.max_restarts if resume_on_death else 0
    deaths_before = len(read_deaths(out))
    for attempt in range(max_restarts + 1):
        rc, errors = _flwr_run(out, cfg, run_config, app_dir, stream_to, flwr_home, client_cpus, ray_address,
                               append_log=attempt > 0)
        deaths = read_deaths(out)
        if not resume_on_death or len(deaths) == deaths_before:
            break
        death, deaths_before = deaths[-1], len(deaths)  # this attempt's (the ServerApp stops at the first)
        (out / "summary.json").unlink(missing_ok=True)  # a stopped attempt's partial results: only a resumed run's
        if attempt == max_restarts:  # complete summary counts (written() then requires a new one)
            raise RuntimeError(f"{restart_line(death, attempt + 1, max_restarts).split(';')[0]}; "
                               f"run.max_restarts={max_restarts} restarts used up; the checkpoints in {out} stay "
                               "at the last complete round: launch again with run.resume=true to continue")
        logger.warning("%s", restart_line(death, attempt + 1, max_restarts))
        run_config = _resume_config(out, cfg)
    return written("the run", rc, failure_line(errors))


def _resume_config(out: Path, cfg: AcmeConfig) -> Path:
    """The run config of a relaunch after a dead worker: the same, with ``run.resume=true``
    (``<out>/run_config.resume.toml``; ``run_config.toml`` stays what the launch was given)."""
    path = out / "run_config.resume.toml"
    path.write_text(toml_lines({**cfg.to_flat(), "run.resume": True}))
    return path


def _flwr_run(out: Path, cfg: AcmeConfig, run_config: Path, app_dir: Path, stream_to: Any, flwr_home: Path | None,
              client_cpus: int, ray_address: str | None, append_log: bool = False) -> tuple[int, list[str]]:
    """One ``flwr run`` in a SuperLink (and simulation) of its own, stopped when it ends; (exit code, exception
    lines of its log)."""
    run = _Launch(flwr_home)
    if ray_address:
        run.env["RAY_ADDRESS"] = ray_address  # Flower's Ray backend calls ray.init(), which joins it
    try:
        run.start_superlink()
        with fab_source(app_dir, run.home) as fab:
            cmd = [_tool("flwr"), "run", str(fab), "--stream", "--run-config", str(run_config),
                   "--federation-config", federation_config(cfg, client_cpus=client_cpus)]
            errors: list[str] = []
            if stream_to in (PROGRESS, VERBOSE):  # the full log goes to run.log; the terminal gets progress and
                proc = run.spawn(cmd, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # warnings, or all
                with (out / "run.log").open("a" if append_log else "w") as full:
                    errors = show_progress(proc.stdout, full, sys.stdout, verbose=stream_to == VERBOSE)
                rc = proc.wait()
            else:
                rc = run.spawn(cmd, cwd=out, stdout=stream_to, stderr=subprocess.STDOUT).wait()
    finally:
        run.close()
    return rc, errors


def accept_run(out: Path, num_supernodes: int | None, overrides: Sequence[str], cfg: AcmeConfig | None,
               app_dir: Path) -> tuple[Path, AcmeConfig, Path, Callable[..., Path]]:
    """Validate (:func:`prepare`); only then claim ``out`` and write its ``run_config.toml``. Returns the resolved
    directory, the config, the run-config path and ``written(what, rc, error=None)``, which returns the
    ``summary.json`` this run wrote or raises RuntimeError if it wrote none (an older one does not count) or one that
    lacks a configured strategy (a later strategy failed; the finished ones stay in it), naming ``error`` (the
    ServerApp's exception line, when the log had one) first."""
    out = out.expanduser().resolve()
    conf_dir = app_dir / "conf" if (app_dir / "conf").is_dir() else CONF_DIR
    cfg = prepare(out, num_supernodes, overrides, cfg, conf_dir)
    # accepted: from here on the output directory is this run's
    out.mkdir(parents=True, exist_ok=True)
    summary = out / "summary.json"
    before = summary.stat().st_mtime_ns if summary.exists() else None
    run_config = out / "run_config.toml"
    run_config.write_text(toml_lines(cfg.to_flat()))

    def written(what: str, rc: int | None, error: str | None = None) -> Path:
        if not summary.exists() or summary.stat().st_mtime_ns == before:
            if error:
                raise RuntimeError(f"{error} ({what} failed: flwr exit code {rc}, no {summary.name}; full log: "
                                   f"{out / 'run.log'})")
            raise RuntimeError(f"{what} wrote no {summary} (flwr exit code {rc}); see the log above")
        done = json.loads(summary.read_text()).get("strategies", {})
        missing = [name for name in cfg.strategy_names if name not in done]
        if missing:  # a strategy failed after others finished: theirs are kept in the summary, the run is not done
            raise RuntimeError(f"{error or 'the run stopped early'} ({what} failed: flwr exit code {rc}; "
                               f"{len(done)} of {len(cfg.strategy_names)} strategies finished, {', '.join(missing)} "
                               f"did not; the finished ones are kept in {summary}; full log: {out / 'run.log'})")
        return summary

    return out, cfg, run_config, written


PROGRESS = "progress"  # launch(stream_to=PROGRESS): condensed terminal output, full log in <out>/run.log
VERBOSE = "verbose"  # launch(stream_to=VERBOSE): the full log on the terminal and in <out>/run.log
_SHOWN = re.compile(r"\[STRATEGY |\[ROUND |\[PROGRESS\] |Bytes of |running as |WARNING|ERROR|Traceback|results go to|"
                    r"summary written|cloud cache (hit|miss)|cache hit")
_TABLE = re.compile(r"^\s*(tier |cloud-edge |edge-device |total |ref )")
_PREFIX = re.compile(r"^(\x1b\[[0-9;]*m)?(INFO|DEBUG)\s*(\x1b\[0m)?\s*:\s*")
MAX_WARNINGS = 20
# the last line of a traceback: "acme_flwr.errors.ConfigError: run.device='cuda' but ..." (dotted type, then message)
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt): \S.*$")


def show_progress(lines: IO[bytes], full: IO[str], term: IO[str], verbose: bool = False) -> list[str]:
    """Copy the run's log to ``full``; print to ``term`` only progress (strategy i/n, round r/R, ``[PROGRESS]`` lines
    of long stages), the byte tables, the mode line, the first ``MAX_WARNINGS`` warnings/errors and every exception
    line (``SomeError: message``, the last line of a traceback), or everything with ``verbose``. Returns the
    exception lines, so that a failed run can say why where the user is looking."""
    strategy, in_table, warned = "", False, 0
    errors: list[str] = []
    for raw in lines:
        line = raw.decode(errors="replace").rstrip("\n")
        full.write(line + "\n")
        text = _PREFIX.sub("", line)
        exc = _EXCEPTION.match(text.strip())
        if exc and exc.group(0) not in errors:
            errors.append(exc.group(0))
            if not verbose:
                term.write(f"  {exc.group(0)}\n")
        elif "ERROR" in line and not any(e.startswith("ERROR ") for e in errors):
            message = re.sub(r"^\s*(\x1b\[[0-9;]*m)?ERROR\s*(\x1b\[0m)?\s*:\s*", "", line).strip()
            if message and not message.startswith("Traceback"):
                errors.append(f"ERROR {message}")  # the first ERROR line, for failures without an exception line
        if verbose:
            term.write(line + "\n")
            term.flush()
            continue
        if in_table and _TABLE.match(text):
            term.write(f"  {text.strip()}\n")
            continue
        in_table = False
        if not _SHOWN.search(text):
            continue
        if "[STRATEGY " in text:
            strategy = text.split("[STRATEGY ", 1)[1].replace("]", "")
            term.write(f"strategy {strategy}\n")
        elif "[PROGRESS] " in text:  # stage, step/epoch and ETA of long work (acme_flwr.logs.Progress)
            term.write(f"  {text.split('[PROGRESS] ', 1)[1].strip()}\n")
        elif "[ROUND " in text:
            term.write(f"  {strategy.split(' ', 1)[-1]}: round {text.split('[ROUND ', 1)[1].rstrip(']')}\n")
        elif "Bytes of " in text:
            in_table = True
            term.write(f"  {text.strip()}\n")
        elif "WARNING" in text or "ERROR" in text or "Traceback" in text:
            warned += 1
            if warned <= MAX_WARNINGS:
                term.write(f"  {text.strip()}\n")
            elif warned == MAX_WARNINGS + 1:
                term.write(f"  ... more warnings in {getattr(full, 'name', 'run.log')}\n")
        else:
            term.write(f"  {text.strip()}\n")
        term.flush()
    return errors


# Flower's wrappers around the exception that stopped a run: they say that it failed, not why
_GENERIC = ("RuntimeError: An error was encountered. Ending simulation.", "RuntimeError: Simulation Runtime crashed.")


def failure_line(errors: Sequence[str]) -> str | None:
    """The line that says why a run failed: the last exception line that is not one of Flower's generic wrappers
    (a chained traceback ends with the exception that was raised: ``ConfigError`` after the ``FileNotFoundError``
    it wraps), else the first ERROR line, else the first wrapper."""
    specific = [e for e in errors if e not in _GENERIC and not e.startswith("ERROR ")]
    if specific:
        return specific[-1]
    return ([e for e in errors if e.startswith("ERROR ")] or list(errors) or [None])[0]


def federation_config(cfg: AcmeConfig, cuda_available: bool | None = None, client_cpus: int = 1) -> str:
    """Simulation resources: ``client_cpus`` CPUs per simulated device (1: one Ray worker per core), plus
    ``run.client_gpus`` of a GPU each when the run uses CUDA (several devices share one GPU); on a CPU-only machine,
    or with ``run.device=cpu``, no GPU is asked for."""
    out = f"num-supernodes={cfg.topology.num_devices} client-resources-num-cpus={client_cpus}"
    if cfg.run.device == "cpu":
        return out
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return out + (f" client-resources-num-gpus={cfg.run.client_gpus:g}" if cuda_available else "")


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


class _Terminated(SystemExit):
    """Raised by the SIGTERM handler so that ``finally`` blocks stop what was started."""


def _on_sigterm(signum: int, _frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)  # one is enough; cleanup must not be interrupted
    raise _Terminated(128 + signum)


def run_cli(run: Callable[[], Path], who: str) -> tuple[int, dict[str, Any] | None]:
    """Run a command-line entry point's ``run()`` (which returns a summary path) with the shared exit codes: 2 for a
    config error, 1 for a failed run, 130/143 for SIGINT/SIGTERM (after ``who`` stopped what it started)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        summary = run()
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2, None
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1, None
    except KeyboardInterrupt:
        print(f"interrupted; everything {who} started is stopped", file=sys.stderr)
        return 130, None
    except _Terminated as exc:
        print(f"terminated; everything {who} started is stopped", file=sys.stderr)
        return int(exc.code or 143), None
    data = json.loads(summary.read_text())
    print("\n" + format_table(data))
    return 0, data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: run.out_dir of the overrides, else outputs/default)")
    parser.add_argument("--num-supernodes", type=int, default=None,
                        help="simulated devices (default: topology.num_devices of the config)")
    parser.add_argument("--ray-address", default=None,
                        help="run the devices on this existing Ray cluster (e.g. 10.0.0.1:6379; default: "
                             "$RAY_ADDRESS, else a local simulation); its nodes and CPUs are printed first")
    parser.add_argument("--verbose", action="store_true",
                        help="print Flower's full log (default: progress and warnings; the full log is in run.log)")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides, e.g. partition.alpha=0.1 dataset=synthetic +experiment=smoke")
    args = parser.parse_args(argv)
    started = time.time()

    def run() -> Path:
        out = args.out
        if out is None:
            given = [o.split("=", 1)[1] for o in args.overrides if o.split("=", 1)[0] == "run.out_dir"]
            out = Path(given[-1]) if given and given[-1] else REPO / "outputs" / "default"
        return launch(out, args.num_supernodes, args.overrides, stream_to=VERBOSE if args.verbose else PROGRESS,
                      ray_address=args.ray_address)

    code, data = run_cli(run, "the launcher")
    if data is None:
        return code
    failures = sum(b["failures"]["count"] for b in data["strategies"].values())
    print(f"\nwall time {time.time() - started:.1f} s; failed device replies (all strategies): {failures}")
    print(f"summary: {Path(data['out_dir']) / 'summary.json'}")
    return lost_devices_verdict(data)


def lost_devices_verdict(summary: dict[str, Any]) -> int:
    """Print one line per strategy that lost devices; 3 if ``run.on_lost_devices=fail`` and some did, else 0."""
    lines = lost_device_lines(summary)
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)
    return 3 if lines and summary.get("config", {}).get("run", {}).get("on_lost_devices") == "fail" else 0


if __name__ == "__main__":
    sys.exit(main())
