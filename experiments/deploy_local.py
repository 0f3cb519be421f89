"""Run the same ServerApp and ClientApp on Flower's Deployment Engine, on this machine, the way real devices run.

    python -m experiments.deploy_local --out outputs/deployed --num-supernodes 4 +experiment=smoke

What it does, in order (every process in its own group, registered with the launcher's watchdog,
``experiments/procs.py``, so nothing outlives this script however it ends):

1. validates the config exactly as ``experiments.launch`` does (nothing is written before it is accepted);
2. generates, in a private ``FLWR_HOME``, a throw-away certificate authority, a SuperLink TLS certificate for
   ``localhost``/``127.0.0.1`` and one ECDSA (NIST P-384) key pair per SuperNode (``cryptography``; no openssl);
3. starts ``flower-superlink`` with TLS and ``--enable-supernode-auth`` on a free loopback port;
4. writes a Flower configuration (``$FLWR_HOME/config.toml``) whose connection ``deploy`` holds the SuperLink's
   address and the root certificate, and registers each SuperNode's public key (``flwr supernode register``);
5. starts N ``flower-supernode``s, SuperNode i with ``--node-config "partition-id=i num-partitions=N"``, its
   private key and the root certificate;
6. submits the run with ``flwr run <app> deploy --stream`` and checks that it wrote ``summary.json``;
7. stops every process it started and removes ``FLWR_HOME``.

The cloud on one machine and devices on others: see docs/operations.md, "Deployment Engine".
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import logging
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acme_flwr.config import AcmeConfig

from . import procs
from .launch import REPO, _free_port, _Launch, _tool, accept_run, fab_source, lost_devices_verdict, run_cli

logger = logging.getLogger(__name__)
CONNECTION = "deploy"  # the connection name in the private Flower configuration
STARTUP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Certificates:
    """PEM files of a throw-away CA and the SuperLink's certificate signed by it."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair (OpenSSH formats, as Flower reads them)."""

    private: Path
    public: Path


def make_certificates(directory: Path, hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
                      days: int = 2) -> Certificates:
    """A CA and a server certificate for ``hosts`` (DNS names or IP addresses as subjectAltNames), ECDSA P-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-flwr throw-away CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out = Certificates(ca=directory / "ca.crt", cert=directory / "server.pem", key=directory / "server.key")
    out.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    out.key.chmod(0o600)
    return out


def make_node_key(directory: Path, name: str) -> NodeKey:
    """An ECDSA P-384 key pair for SuperNode authentication (``ssh-keygen -t ecdsa -b 384`` equivalent)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    out = NodeKey(private=directory / name, public=directory / f"{name}.pub")
    out.private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    out.private.chmod(0o600)
    out.public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                         serialization.PublicFormat.OpenSSH) + b"\n")
    return out


def flower_config(address: str, root_certificates: Path) -> str:
    """``$FLWR_HOME/config.toml`` with one connection, :data:`CONNECTION`, to a TLS SuperLink (the default)."""
    return (f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n'
            f'root-certificates = "{root_certificates}"\n')


class LocalDeployment(_Launch):
    """A TLS SuperLink with SuperNode authentication and N SuperNodes on 127.0.0.1; ``close()`` stops them all."""

    def __init__(self, flwr_home: Path | None = None) -> None:
        super().__init__(flwr_home)
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.certs = make_certificates(self.home / "tls")
        self.supernodes: dict[int, subprocess.Popen[bytes]] = {}
        self.logs = self.home / "logs"
        self.logs.mkdir(exist_ok=True)
        (self.home / "config.toml").write_text(flower_config(self.address, self.certs.ca))

    def start_superlink(self) -> None:
        """``flower-superlink`` over TLS with ``--enable-supernode-auth``; wait until it answers over HTTPS."""
        runtime = self.home / "superlink"
        runtime.mkdir(exist_ok=True)
        log = self.logs / "superlink.log"
        self.superlink = self.spawn(
            [_tool("flower-superlink"), "--ssl-ca-certfile", str(self.certs.ca), "--ssl-certfile",
             str(self.certs.cert), "--ssl-keyfile", str(self.certs.key), "--enable-supernode-auth",
             "--isolation", "subprocess", "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
             "--port", str(self.port), "--database", str(runtime / "state.db")],
            cwd=runtime, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        context = ssl.create_default_context(cafile=str(self.certs.ca))
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.superlink.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with code {self.superlink.returncode}: "
                                   f"{_tail(log)}")
            try:
                with urllib.request.urlopen(f"https://{self.address}/health", timeout=0.5, context=context):
                    logger.info("SuperLink up (TLS, SuperNode authentication) on %s, pid %d", self.address,
                                self.superlink.pid)
                    return
            except urllib.error.HTTPError:  # TLS worked and the server answered: it is up
                logger.info("SuperLink up (TLS, SuperNode authentication) on %s", self.address)
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"flower-superlink did not answer on {self.address} within {STARTUP_TIMEOUT:.0f} s")

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a ``flwr`` CLI command against this deployment (private FLWR_HOME); raise on failure."""
        res = subprocess.run([_tool("flwr"), *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                             check=False)
        if res.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed ({res.returncode}): "
                               f"{' '.join((res.stdout + res.stderr).split())[-400:]}")
        return res

    def register(self, key: NodeKey) -> None:
        """Register a SuperNode's public key with the SuperLink (only registered nodes may connect)."""
        self.flwr("supernode", "register", str(key.public), CONNECTION)

    def start_supernode(self, pid: int, num_partitions: int, key: NodeKey | None,
                        extra_node_config: str = "", max_retries: int | None = None) -> subprocess.Popen[bytes]:
        """SuperNode ``pid`` (``partition-id=pid num-partitions=N`` in its node config) with its own FLWR_HOME."""
        home = self.home / "supernodes" / str(pid)
        home.mkdir(parents=True, exist_ok=True)
        node_config = f"partition-id={pid} num-partitions={num_partitions} {extra_node_config}".strip()
        cmd = [_tool("flower-supernode"), "--root-certificates", str(self.certs.ca), "--superlink", self.address,
               "--node-config", node_config, "--isolation", "subprocess", "--host", "127.0.0.1",
               "--port", str(_free_port())]
        if key is not None:
            cmd += ["--auth-supernode-private-key", str(key.private)]
        if max_retries is not None:
            cmd += ["--max-retries", str(max_retries)]
        log = self.logs / f"supernode-{pid}.log"
        env = {**self.env, "FLWR_HOME": str(home)}
        proc = subprocess.Popen(cmd, env=env, cwd=home, start_new_session=True, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT, preexec_fn=procs.die_with_parent())
        self.pgids.append(proc.pid)
        if self._pipe is not None:
            self._pipe.write(f"pgid {proc.pid}\n")
        self.supernodes[pid] = proc
        return proc

    def start_federation(self, num_supernodes: int) -> None:
        """SuperLink, registered keys, then the SuperNodes."""
        self.start_superlink()
        keys = [make_node_key(self.home / "keys", f"supernode-{pid}") for pid in range(num_supernodes)]
        for key in keys:
            self.register(key)
        for pid, key in enumerate(keys):
            self.start_supernode(pid, num_supernodes, key)
        logger.info("%d SuperNodes started (keys registered), logs in %s", num_supernodes, self.logs)


def _tail(path: Path, lines: int = 3) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(text[-lines:])


def deploy(out: Path, num_supernodes: int | None = None, overrides: Sequence[str] = (), app_dir: Path = REPO,
           stream_to: Any = None, flwr_home: Path | None = None, *, cfg: AcmeConfig | None = None,
           timeout: float = 1800.0) -> Path:
    """Validate, start a local TLS federation, ``flwr run`` on it and return the path of its ``summary.json``.

    Same arguments as :func:`experiments.launch.launch`; raises ConfigError (``out`` untouched) or RuntimeError
    (no summary written). Every process started is stopped and ``flwr_home`` removed when this returns."""
    out, cfg, run_config, written = accept_run(out, num_supernodes, overrides, cfg, app_dir)
    run = LocalDeployment(flwr_home)
    rc: int | None = None
    try:
        run.start_federation(cfg.topology.num_devices)
        with fab_source(app_dir, run.home) as fab:
            cmd = [_tool("flwr"), "run", str(fab), CONNECTION, "--stream", "--run-config", str(run_config)]
            proc = run.spawn(cmd, cwd=out, stdout=stream_to, stderr=subprocess.STDOUT)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
    finally:
        run.close()
    return written("the deployed run", rc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "deployed", help="output directory")
    parser.add_argument("--num-supernodes", type=int, default=None,
                        help="SuperNodes (devices) to start (default: topology.num_devices of the config)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for experiments.launch")
    args = parser.parse_args(argv)
    started = time.time()
    code, data = run_cli(lambda: deploy(args.out, args.num_supernodes, args.overrides), "this script")
    if data is None:
        return code
    print(f"\ndeployed run: {time.time() - started:.1f} s; summary: {Path(data['out_dir']) / 'summary.json'}")
    return lost_devices_verdict(data)


if __name__ == "__main__":
    sys.exit(main())
