"""A real Flower deployment on this machine: one SuperLink, N SuperNodes.

:func:`make_credentials` writes a private CA, a SuperLink server certificate (for
``localhost``, ``127.0.0.1`` and any other names the SuperLink is reached by) and one
ECDSA key pair per SuperNode for Flower's SuperNode authentication, with Python's
``cryptography`` (a Flower dependency; no ``openssl`` binary needed).
:class:`LocalDeployment` starts a non-simulation SuperLink (TLS and node
authentication optional), registers the SuperNodes' public keys with
``flwr supernode register``, starts each ``flower-supernode`` in its own process
group with its node config (dialing the SuperLink by ``127.0.0.1`` or by another
name for it, such as ``localhost``), and stops them all on exit.

Each SuperNode holds its own data through its node config: ``partition-id`` and
``num-partitions`` (a partition of the run's dataset) or ``data-path`` (an ``.npz``
file with ``x_train``, ``y_train``, ``x_test``, ``y_test``).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_app.deploy.launcher import FlowerRunError, LocalSuperLink
from fl_app.deploy.processes import flwr_tool, free_port, stop_group

log = logging.getLogger(__name__)

# Names every SuperLink certificate carries: a SuperLink started with
# ``--host 0.0.0.0`` has its own SuperExec (which starts the ServerApps) connect to
# it at 127.0.0.1 over TLS (flwr 1.42: ``resolve_bind_address`` in
# ``flwr/supercore/address.py``); with a certificate that lacks 127.0.0.1 that
# SuperExec fails on every attempt ("certificate is not valid for '127.0.0.1'").
LOCAL_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class Credentials:
    """Paths of the files :func:`make_credentials` wrote."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_keys: tuple[tuple[Path, Path], ...]  # (private key, public key) per node


def make_credentials(
    directory: Path,
    num_nodes: int,
    hosts: Sequence[str] = (),
    days: int = 365,
) -> Credentials:
    """Write a CA, a SuperLink server certificate and ``num_nodes`` node keys.

    Parameters
    ----------
    directory : Path
        Where the files go (created if missing); files already there are replaced.
    num_nodes : int
        How many SuperNode key pairs to write (``supernode-<i>``, ``.pub``).
    hosts : Sequence[str]
        The names (DNS names or IP addresses) SuperNodes and ``flwr`` users reach the
        SuperLink by, such as ``superlink.example.org`` or ``10.1.2.3``. The
        certificate is valid for these and for :data:`LOCAL_NAMES`, which the
        SuperLink needs for itself; the first one is its common name.
    days : int
        How long the CA and the certificate are valid.

    Node keys are ECDSA (P-384) in OpenSSH format, as ``ssh-keygen -t ecdsa -b 384``
    writes them and Flower's SuperNode authentication reads them.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fl-dnn CA"))
        .issuer_name(name("fl-dnn CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    names = list(dict.fromkeys([*hosts, *LOCAL_NAMES]))  # in order, once each
    alt_names: list[x509.GeneralName] = []
    for host in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(name(names[0]))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = Credentials(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        node_keys=tuple(
            (directory / f"supernode-{i}", directory / f"supernode-{i}.pub")
            for i in range(num_nodes)
        ),
    )
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(pem_key(server_key))
    files.server_key.chmod(0o600)
    for private, public in files.node_keys:
        key = ec.generate_private_key(ec.SECP384R1())
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        private.chmod(0o600)
        public.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
        )
    return files


def node_config_string(values: Mapping[str, Any]) -> str:
    """Format a node config for ``flower-supernode --node-config``."""
    return " ".join(
        f"{key}={json.dumps(value) if isinstance(value, str) else value}"
        for key, value in values.items()
    )


class LocalDeployment:
    """A SuperLink and SuperNodes on this machine, stopped together on exit.

    Parameters
    ----------
    node_configs : Sequence[Mapping[str, Any]]
        One node config per SuperNode (``partition-id``/``num-partitions`` or
        ``data-path``, optionally ``capacity``).
    credentials : Credentials | None
        TLS for every connection, and (with ``authenticate``) the node keys;
        ``None`` runs insecurely.
    authenticate : bool
        Enable SuperNode authentication and register the nodes' public keys.
    register : Sequence[bool] | None
        Which nodes to register (default: all); an unregistered node is refused.
    superlink_host : str | Sequence[str]
        The name the SuperNodes dial the SuperLink by (``--superlink HOST:PORT``),
        one for all or one per node: ``127.0.0.1`` (the address the SuperLink
        listens on) or another name for this machine such as ``localhost``, as a
        SuperNode on another host dials the SuperLink's host name. With TLS, each
        must be a name the server certificate holds.
    """

    def __init__(
        self,
        node_configs: Sequence[Mapping[str, Any]],
        *,
        credentials: Credentials | None = None,
        authenticate: bool = False,
        register: Sequence[bool] | None = None,
        superlink_host: str | Sequence[str] = "127.0.0.1",
        startup_timeout_s: float = 120.0,
    ) -> None:
        if authenticate and credentials is None:
            raise ValueError("SuperNode authentication needs credentials (and TLS)")
        if credentials is not None and len(credentials.node_keys) < len(node_configs):
            raise ValueError(
                f"{len(node_configs)} SuperNodes but keys for "
                f"{len(credentials.node_keys)}"
            )
        hosts = (
            [superlink_host] * len(node_configs)
            if isinstance(superlink_host, str)
            else list(superlink_host)
        )
        if len(hosts) != len(node_configs):
            raise ValueError(
                f"superlink_host: {len(hosts)} hosts for {len(node_configs)} "
                "SuperNodes; give one for all or one per node"
            )
        self.superlink_hosts = hosts
        self.node_configs = list(node_configs)
        self.credentials = credentials
        self.authenticate = authenticate
        self.register = list(register) if register else [True] * len(node_configs)
        self.startup_timeout_s = startup_timeout_s
        self.link = LocalSuperLink(
            simulation=False, tls=credentials, supernode_auth=authenticate
        )
        self.nodes: list[subprocess.Popen[bytes] | None] = []

    def __enter__(self) -> LocalDeployment:
        self.link.__enter__()
        try:
            if self.authenticate:
                for i, registered in enumerate(self.register):
                    if registered:
                        self._register(i)
            for i in range(len(self.node_configs)):
                self.nodes.append(self._start_node(i))
            self.wait_online(sum(self.register))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _register(self, index: int) -> None:
        public = self.credentials.node_keys[index][1]
        result = self.link.cli("supernode", "register", str(public), "fl-dnn")
        if result.returncode != 0 or "registered" not in result.stdout:
            raise FlowerRunError(
                f"could not register SuperNode {index}: {result.stdout}{result.stderr}"
            )

    def node_log(self, index: int) -> Path:
        """Return the log file of SuperNode ``index``."""
        return self.link.home / f"supernode-{index}.log"

    def superlink_address(self, index: int) -> str:
        """Return the ``host:port`` SuperNode ``index`` dials."""
        return f"{self.superlink_hosts[index]}:{self.link.port}"

    def _start_node(self, index: int) -> subprocess.Popen[bytes]:
        command = [
            flwr_tool("flower-supernode"),
            "--superlink",
            self.superlink_address(index),
            "--node-config",
            node_config_string(self.node_configs[index]),
            "--port",
            str(free_port()),
            "--max-retries",
            "3",
        ]
        if self.credentials is None:
            command.append("--insecure")
        else:
            command += ["--root-certificates", str(self.credentials.ca_cert)]
            if self.authenticate:
                command += [
                    "--auth-supernode-private-key",
                    str(self.credentials.node_keys[index][0]),
                ]
        with self.node_log(index).open("ab") as log_file:
            return subprocess.Popen(
                command,
                env=self.link.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def online_nodes(self) -> int:
        """How many SuperNodes the SuperLink lists as online."""
        result = self.link.cli("supernode", "ls", "fl-dnn", "--format", "json")
        try:
            nodes = json.loads(result.stdout).get("nodes", [])
        except ValueError:
            return 0
        return sum(1 for node in nodes if node.get("status") == "online")

    def wait_online(self, count: int) -> None:
        """Wait until ``count`` SuperNodes are online, else fail with their logs."""
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.online_nodes() >= count:
                return
            time.sleep(1.0)
        logs = "\n".join(
            f"--- supernode {i}:\n" + _tail(self.node_log(i))
            for i in range(len(self.node_configs))
        )
        raise FlowerRunError(
            f"{count} SuperNode(s) were not online within "
            f"{self.startup_timeout_s:.0f}s\n{logs}"
        )

    def kill_node(self, index: int) -> None:
        """Kill SuperNode ``index`` and its ClientApps at once, like a crash."""
        process = self.nodes[index]
        if process is not None:
            try:
                os.killpg(os.getpgid(process.pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=10)

    def stop(self) -> None:
        """Stop every SuperNode, then the SuperLink; remove the private home."""
        for process in self.nodes:
            if process is not None:
                stop_group(process)
        self.nodes = []
        self.link.stop()


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
