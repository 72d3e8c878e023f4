"""Run the Flower app in Flower's simulation runtime from Python, owning the SuperLink.

:func:`run_simulation` starts a private ``flower-superlink --simulation`` (its own
``FLWR_HOME`` and a free port, so it never meets a user's SuperLink or another
launcher's), submits the app with ``flwr run --stream``, streams the run's log, asks
the SuperLink for the run's final status, and stops the SuperLink and everything it
started. A failed run raises :class:`FlowerRunError` carrying Flower's error.

This module does not import TensorFlow: the training happens in Flower's processes.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_app.core.config import toml_value
from fl_app.deploy.processes import (  # noqa: F401  (FlowerRunError: API)
    FlowerRunError,
    flwr_tool,
    free_port,
    stop_group,
)
from fl_app.deploy.watchdog import MARKER, stop_all

log = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parents[2]  # the project: fl_app/deploy/..
CONNECTION = "fl-dnn"
_RUN_ID = re.compile(r"Successfully started run (\d+)")
# The ServerApp's last line (fl_app.server.run.run_server): every result is written.
_SERVERAPP_DONE = re.compile(r"fl-dnn: finished \d+ rounds")
# How long a simulation may take to end once its ServerApp has: Flower's simulation
# engine joins every ClientApp still running (a straggler of a round closed at
# round-timeout) before the run ends; past this, the launcher stops the runtime.
END_GRACE_S = 5.0


@dataclass(frozen=True)
class RunOutcome:
    """What a finished run left behind."""

    run_id: int
    status: str
    output_dir: Path
    summary: dict[str, Any]


def write_toml_table(values: Mapping[str, Any], path: Path) -> None:
    """Write flat ``key = value`` pairs as TOML for ``--run-config FILE``."""
    lines = [f'"{key}" = {toml_value(value)}' for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")


def stage_app(app_dir: Path, dest: Path) -> Path:
    """Copy the app's own files (``pyproject.toml`` and its packages) to ``dest``.

    ``flwr run DIR`` walks every file under ``DIR`` before it filters what goes into
    the app bundle (FAB): in a checkout that is the whole ``.venv`` (57,000 files,
    5.5 s here). The packages are the ones the wheel ships
    (``[tool.hatch.build.targets.wheel] packages``), so the bundle holds the code
    that the installed project runs and nothing else.
    """
    pyproject = app_dir / "pyproject.toml"
    packages = tomllib.loads(pyproject.read_text())["tool"]["hatch"]["build"][
        "targets"
    ]["wheel"]["packages"]
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(pyproject, dest / "pyproject.toml")
    for package in packages:
        for source in (app_dir / package).rglob("*.py"):
            target = dest / source.relative_to(app_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def check_app_config(app_dir: Path, overrides: Mapping[str, Any]) -> None:
    """Refuse keys the app's ``[tool.flwr.app.config]`` lacks, naming the fix.

    Flower rejects a run whose overrides name a key its app config does not have,
    with ``Invalid run configuration`` and no key: a setting declared in the schema
    (a new feature's, say) but not yet written into ``pyproject.toml``.
    """
    pyproject = tomllib.loads((app_dir / "pyproject.toml").read_text())
    declared = pyproject["tool"]["flwr"]["app"].get("config", {})
    missing = sorted(set(overrides) - set(declared))
    if missing:
        raise FlowerRunError(
            f"run config key(s) {', '.join(missing)} are not in "
            f"{app_dir / 'pyproject.toml'}'s [tool.flwr.app.config], so Flower would "
            "refuse the run: run `uv run python scripts/write_app_config.py` (it "
            "writes that table from the settings the schema declares)"
        )


class SuperLinkConnection:
    """A private ``flwr`` CLI configuration (own ``FLWR_HOME``) for one SuperLink.

    ``root_certificates``: the CA file of a TLS SuperLink; ``None`` connects
    insecurely. Nothing is started: :class:`LocalSuperLink` starts its own.
    """

    def __init__(
        self,
        address: str,
        root_certificates: Path | None = None,
        home: Path | None = None,
    ) -> None:
        self.home = home or Path(tempfile.mkdtemp(prefix="fl-dnn-flwr-"))
        self._address = address
        self.root_certificates = (
            Path(root_certificates).resolve() if root_certificates else None
        )
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            # Offline: never let Flower try `uv sync` for the app.
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            # The SuperExec asks the SuperLink for a new run to launch every 1 s by
            # default; 0.1 s starts a submitted run sooner (a local gRPC call).
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": os.environ.get(
                "FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1"
            ),
            "PYTHONUNBUFFERED": "1",
            # The simulation process runs the ServerApp in a thread beside Flower's
            # and Ray's; numpy's OpenBLAS pool hung there once in exec_blas (10 min
            # at 100 % CPU in a small matmul). The server's numpy work is small and
            # TensorFlow does not use OpenBLAS: one BLAS thread, unless the user
            # sets it.
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1"),
            # Ray's setproctitle otherwise zeroes a process's environment block to
            # make room for its title ("ray::DashboardAgent"), and with it the launch
            # token fl_app.deploy.watchdog finds processes by.
            "SPT_NOENV": "1",
            "PATH": os.pathsep.join(
                [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
            ),
        }

    @property
    def address(self) -> str:
        """``host:port`` of the SuperLink's Control API."""
        return self._address

    def write_config(self) -> None:
        """Write the ``flwr`` CLI connection ``fl-dnn`` into this ``FLWR_HOME``."""
        security = (
            f'root-certificates = "{self.root_certificates}"\n'
            if self.root_certificates
            else "insecure = true\n"
        )
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\n{security}'
        )

    def cli(
        self, *args: str, timeout: float | None = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a ``flwr`` CLI command against this SuperLink."""
        return subprocess.run(
            [flwr_tool("flwr"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def __enter__(self) -> SuperLinkConnection:
        self.write_config()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Remove the private ``FLWR_HOME``."""
        shutil.rmtree(self.home, ignore_errors=True)


class LocalSuperLink(SuperLinkConnection):
    """A private ``flower-superlink`` that is stopped with its children.

    By default it runs Flower's simulation runtime, insecurely. With
    ``simulation=False`` it serves real SuperNodes; ``tls`` (a
    :class:`fl_app.deploy.deployment.Credentials`) serves TLS with that server
    certificate; ``supernode_auth`` admits only registered SuperNodes.
    """

    def __init__(
        self,
        startup_timeout_s: float = 60.0,
        *,
        simulation: bool = True,
        tls: Any = None,
        supernode_auth: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        port = free_port()
        super().__init__(
            f"127.0.0.1:{port}", root_certificates=tls.ca_cert if tls else None
        )
        # A private Ray unless told otherwise: Flower's ray.init() without an address
        # joins the cluster in RAY_ADDRESS, else the last one `ray start` started on
        # this machine (/tmp/ray/ray_current_cluster); "local" always starts one.
        self.env["RAY_ADDRESS"] = "local"
        self.env.update(env or {})  # e.g. RAY_ADDRESS: join an existing Ray cluster
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.simulation = simulation
        self.tls = tls
        self.supernode_auth = supernode_auth
        self.log_path = self.home / "superlink.log"
        self.process: subprocess.Popen[bytes] | None = None
        # every process the SuperLink starts carries this token (fl_app.deploy.watchdog)
        self.token = uuid.uuid4().hex
        self.env[MARKER] = self.token
        self.watchdog: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalSuperLink:
        self.write_config()
        command = [
            flwr_tool("flower-superlink"),
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        if self.simulation:
            command.append("--simulation")
        if self.tls is None:
            command.append("--insecure")
        else:
            command += [
                "--ssl-ca-certfile",
                str(self.tls.ca_cert),
                "--ssl-certfile",
                str(self.tls.server_cert),
                "--ssl-keyfile",
                str(self.tls.server_key),
            ]
        if self.supernode_auth:
            command.append("--enable-supernode-auth")
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, stopped as one
            )
        self.watchdog = _start_watchdog(self.process.pid, self.token)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        import httpx

        logging.getLogger("httpx").setLevel(logging.WARNING)

        scheme = "http" if self.tls is None else "https"
        verify: bool | ssl.SSLContext = (
            True
            if self.tls is None
            else ssl.create_default_context(cafile=str(self.tls.ca_cert))
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise FlowerRunError(
                    f"flower-superlink exited with code {self.process.returncode}:\n"
                    f"{self.log_tail()}"
                )
            try:
                url = f"{scheme}://{self.address}/health"
                if httpx.get(url, timeout=1.0, verify=verify).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise FlowerRunError(
            f"flower-superlink was not ready within {self.startup_timeout_s:.0f}s:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines of the SuperLink's log."""
        if not self.log_path.exists():
            return ""
        return "\n".join(
            self.log_path.read_text(errors="replace").splitlines()[-lines:]
        )

    def stop(self) -> None:
        """Stop the SuperLink, its group and whatever it started; remove its home.

        Processes that left the group (Ray's daemons start sessions of their own)
        are found by the token in their environment.
        """
        process, self.process = self.process, None
        if process is not None:
            stop_group(process)
            stop_all(process.pid, self.token, grace_s=2.0)
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None and watchdog.stdin is not None:
            try:  # a normal stop: the watchdog has nothing left to do
                watchdog.stdin.write(b"done")
                watchdog.stdin.close()
            except BrokenPipeError:
                pass
            try:
                watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                watchdog.kill()
        shutil.rmtree(self.home, ignore_errors=True)


def _start_watchdog(pgid: int, token: str) -> subprocess.Popen[bytes]:
    """Start ``fl_app.deploy.watchdog`` for group ``pgid``; this process holds its pipe.

    In a session of its own, so a signal to the launcher's process group leaves it
    running to clean up after the launcher.
    """
    env = {k: v for k, v in os.environ.items() if k != MARKER}
    return subprocess.Popen(
        [sys.executable, "-m", "fl_app.deploy.watchdog", str(pgid), token],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )


def _run_status(link: SuperLinkConnection, run_id: int) -> tuple[str, str]:
    result = link.cli("ls", "--run-id", str(run_id), "--format", "json")
    try:
        runs = json.loads(result.stdout)["runs"]
        return runs[0]["status"], runs[0].get("status-details") or ""
    except (ValueError, KeyError, IndexError) as err:
        raise FlowerRunError(
            f"could not read the status of run {run_id}: {result.stdout}{result.stderr}"
        ) from err


def federation_config(
    num_supernodes: int,
    client_num_cpus: int = 1,
    client_num_gpus: float = 0.0,
    backend_num_cpus: int | None = None,
    ray_address: str | None = None,
) -> str:
    """Return Flower's ``--federation-config`` for a simulation (checked).

    CPUs per client are whole (Flower's ``client-resources-num-cpus`` is an
    integer); GPUs may be a fraction. A Ray cluster has its own resources, so
    ``backend_num_cpus`` (Ray's ``init-args-num-cpus``) is refused with
    ``ray_address``: Ray refuses ``num_cpus`` when joining a cluster.
    """
    if isinstance(client_num_cpus, bool) or not (
        isinstance(client_num_cpus, int) and client_num_cpus >= 1
    ):
        raise ValueError(
            f"client_num_cpus={client_num_cpus!r}: a whole number >= 1 (Flower's "
            "federation config takes whole CPUs; share GPUs with client_num_gpus)"
        )
    if isinstance(client_num_gpus, bool) or not (
        isinstance(client_num_gpus, int | float) and client_num_gpus >= 0
    ):
        raise ValueError(f"client_num_gpus={client_num_gpus!r}: a number >= 0")
    if ray_address and backend_num_cpus is not None:
        raise ValueError(
            "backend_num_cpus with ray_address: a Ray cluster has its own "
            "resources (Ray refuses num_cpus when joining one)"
        )
    federation = (
        f"num-supernodes={num_supernodes} client-resources-num-cpus={client_num_cpus}"
    )
    if client_num_gpus:
        federation += f" client-resources-num-gpus={float(client_num_gpus)}"
    if backend_num_cpus is not None:
        federation += f" init-args-num-cpus={backend_num_cpus}"
    return federation


def run_simulation(
    run_config: Mapping[str, Any],
    *,
    output_dir: Path,
    num_supernodes: int,
    client_num_cpus: int = 1,
    client_num_gpus: float = 0.0,
    backend_num_cpus: int | None = None,
    ray_address: str | None = None,
    app_dir: Path = APP_DIR,
    timeout_s: float | None = None,
    echo: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Run the app once in Flower's simulation runtime and return its outcome.

    Parameters
    ----------
    run_config : Mapping[str, Any]
        Flat run-config overrides (keys of ``[tool.flwr.app.config]``).
        ``output-dir`` is set to ``output_dir``.
    output_dir : Path
        Where the ServerApp writes the results.
    num_supernodes : int
        Simulated SuperNodes (one per client partition).
    client_num_cpus : int
        CPUs reserved per simulated client (Ray actor resources; whole CPUs, as
        Flower's federation config takes them).
    client_num_gpus : float
        GPUs reserved per simulated client; a fraction lets several clients share
        one GPU (TensorFlow grows its memory as needed, ``configure_tensorflow``).
    backend_num_cpus : int | None
        CPUs a private Ray may hand out (default: the machine's cores); with
        ``client_num_cpus`` it sets how many clients train at once. Not with
        ``ray_address`` (a cluster has its own resources).
    ray_address : str | None
        Run on the existing Ray cluster at this address (``auto`` or
        ``HOST:PORT``) instead of a private Ray on this machine; every node is
        checked first (:func:`fl_app.deploy.cluster.check_cluster`). The cluster
        is left running.
    app_dir : Path
        The Flower app (the directory holding ``pyproject.toml``).
    timeout_s : float | None
        Stop the run and fail when it takes longer.
    echo : Callable[[str], None] | None
        Receives each line of the run's log as it streams (default: stdout).

    Raises
    ------
    FlowerRunError
        When the run cannot be started, fails, or times out; the message holds
        Flower's error and the end of the run's log.
    """
    federation = federation_config(
        num_supernodes, client_num_cpus, client_num_gpus, backend_num_cpus, ray_address
    )
    env: dict[str, str] = {}
    if ray_address:
        from fl_app.deploy.cluster import check_cluster

        check_cluster(ray_address, run_config)
        env["RAY_ADDRESS"] = ray_address  # Flower's ray.init() joins the cluster
        data = None  # each node built the run's data in the check
    else:
        data = _prepare_data(run_config)
    try:
        with LocalSuperLink(env=env) as link:
            return run_app(
                link,
                run_config,
                output_dir=output_dir,
                federation_config=federation,
                app_dir=app_dir,
                timeout_s=timeout_s,
                echo=echo,
                end_grace_s=END_GRACE_S,  # the SuperLink is ours: stop it then
            )
    finally:
        if data is not None:
            data.join()


def _prepare_data(run_config: Mapping[str, Any]) -> threading.Thread | None:
    """Build the run's data into the on-disk cache while the SuperLink starts.

    The SuperLink's start (about 2 s here) leaves this process waiting; the
    ServerApp and every Ray worker then read the cache instead of building the data
    themselves. Any failure is left for the run to report: the ServerApp builds the
    data itself and raises the real error.
    """
    from fl_app.core.config import ConfigError, parse_run_config

    try:
        cfg = parse_run_config(run_config)
    except ConfigError:
        return None

    def prepare() -> None:
        from fl_app.data import prepare_federated_data

        try:
            prepare_federated_data(cfg)
        except Exception as err:  # noqa: BLE001  (the run reports it properly)
            log.debug("could not prepare the run's data: %s", err)

    thread = threading.Thread(target=prepare, name="fl-dnn-prepare-data", daemon=True)
    thread.start()
    return thread


def run_app(
    link: SuperLinkConnection,
    run_config: Mapping[str, Any],
    *,
    output_dir: Path,
    federation_config: str | None = None,
    app_dir: Path = APP_DIR,
    timeout_s: float | None = None,
    echo: Callable[[str], None] | None = None,
    end_grace_s: float | None = None,
) -> RunOutcome:
    """Submit the app to ``link`` with ``flwr run --stream`` and wait for its outcome.

    ``federation_config`` is for a simulation SuperLink (``num-supernodes=...``); a
    deployment's federation is whatever SuperNodes are connected. What is submitted
    is a copy of the app's own files under the connection's ``FLWR_HOME``
    (:func:`stage_app`). ``end_grace_s``: once the ServerApp has written its
    results, wait at most this long for the run to end, then stop waiting (the
    caller stops the SuperLink it owns): Flower's simulation engine holds the run
    open until every ClientApp it started returns, a straggler of a closed round
    included. Raises :class:`FlowerRunError` as :func:`run_simulation` does.
    """
    echo = echo or (lambda line: print(line, flush=True))
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    overrides = {**run_config, "output-dir": str(output_dir)}
    check_app_config(app_dir, overrides)
    config_file = link.home / f"run_config_{time.monotonic_ns()}.toml"
    write_toml_table(overrides, config_file)
    staged = stage_app(app_dir, link.home / f"app_{time.monotonic_ns()}")
    command = [
        flwr_tool("flwr"),
        "run",
        str(staged),
        CONNECTION,
        "--run-config",
        str(config_file),
        "--stream",
    ]
    if federation_config is not None:
        command += ["--federation-config", federation_config]
    streamed: list[str] = []
    run_id, cut_short = _stream(command, link, streamed, echo, timeout_s, end_grace_s)
    if cut_short:
        status, details = "serverapp-finished", ""
        log.info(
            "run %d: the ServerApp finished; %.0f s later Flower's simulation was "
            "still waiting for ClientApps of closed rounds: not waiting for them",
            run_id,
            end_grace_s,
        )
    else:
        status, details = _run_status(link, run_id)
    (output_dir / "flower.log").write_text("\n".join(streamed) + "\n")
    if status not in ("finished:completed", "serverapp-finished"):
        tail = "\n".join(streamed[-30:])
        raise FlowerRunError(
            f"Flower run {run_id} ended as '{status}'"
            + (f" ({details})" if details else "")
            + f"; last log lines:\n{tail}"
        )
    summary_path = output_dir / "summary.json"
    if not summary_path.exists():
        raise FlowerRunError(f"run {run_id} completed but wrote no {summary_path}")
    return RunOutcome(
        run_id=run_id,
        status=status,
        output_dir=output_dir,
        summary=json.loads(summary_path.read_text()),
    )


def _stream(
    command: list[str],
    link: SuperLinkConnection,
    streamed: list[str],
    echo: Callable[[str], None],
    timeout_s: float | None,
    end_grace_s: float | None = None,
) -> tuple[int, bool]:
    """Run ``flwr run --stream``, pass its lines on; return the run id, cut short.

    A reader thread collects the lines so the timeout holds even while the run
    prints nothing. With ``end_grace_s``, a run still streaming that long after the
    ServerApp's last line is left (its ``flwr run`` killed): ``cut_short`` is True.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    lines: queue.Queue[str | None] = queue.Queue()
    run_id: int | None = None
    done_at: float | None = None  # when the ServerApp's last line arrived
    cut_short = False
    with subprocess.Popen(
        command,
        env=link.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        stdout = process.stdout

        def read() -> None:
            for raw in stdout:
                lines.put(raw.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        while True:
            ends = [t for t in (deadline, done_at) if t is not None]
            wait = max(0.0, min(ends) - time.monotonic()) if ends else None
            try:
                line = lines.get(timeout=wait)
            except queue.Empty:
                process.kill()
                if done_at is not None and time.monotonic() >= done_at:
                    cut_short = True
                    break
                if run_id is not None:
                    link.cli("stop", str(run_id), CONNECTION, timeout=30)
                raise FlowerRunError(
                    f"Flower run {run_id} did not finish within {timeout_s:.0f}s"
                ) from None
            if line is None:
                break
            streamed.append(line)
            echo(line)
            match = _RUN_ID.search(line)
            if match and run_id is None:
                run_id = int(match.group(1))
            if end_grace_s is not None and _SERVERAPP_DONE.search(line):
                done_at = time.monotonic() + end_grace_s
        process.wait()
    if run_id is None:
        raise FlowerRunError(
            "flwr run did not start a run:\n" + "\n".join(streamed[-30:])
        )
    return run_id, cut_short
