"""Start a SuperLink and N SuperNodes on this machine; stop them all on Ctrl-C.

    uv run python scripts/deploy_local.py --nodes 2                  # insecure
    uv run python scripts/deploy_local.py --nodes 2 --tls certs --auth
    uv run python scripts/deploy_local.py --tls certs --auth --superlink-host localhost
    uv run python scripts/deploy_local.py --data-path a.npz --data-path b.npz

Each SuperNode gets ``partition-id=i num-partitions=N`` of the run's dataset, or, with
``--data-path`` (once per node), its own ``.npz`` file (``x_train``, ``y_train``,
``x_test``, ``y_test``). ``--tls DIR`` uses (and, if missing, creates) the files of
``scripts/make_credentials.py``; ``--auth`` enables SuperNode authentication and
registers every node's public key (``--unregistered K`` leaves the last K out, to see
them refused). ``--superlink-host NAME`` has the SuperNodes dial the SuperLink by
``NAME`` instead of 127.0.0.1 (with ``--tls``, a name its certificate holds), as
SuperNodes on other hosts dial its host name (docs/deployment.md). The script prints
how to submit runs, then waits; Ctrl-C (or SIGTERM) stops every process it started.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fl_app.deploy.deployment import Credentials, LocalDeployment, make_credentials  # noqa: E402


def credentials(directory: Path, nodes: int) -> Credentials:
    """Load the files in ``directory``, creating them where missing."""
    ca = directory / "ca.crt"
    keys = tuple(
        (directory / f"supernode-{i}", directory / f"supernode-{i}.pub")
        for i in range(nodes)
    )
    if not ca.exists() or not all(k.exists() for pair in keys for k in pair):
        return make_credentials(directory, nodes)
    return Credentials(ca, directory / "server.pem", directory / "server.key", keys)


def main() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=None)
    parser.add_argument("--data-path", action="append", default=[], type=Path)
    parser.add_argument("--tls", type=Path, default=None, metavar="DIR")
    parser.add_argument("--auth", action="store_true")
    parser.add_argument("--unregistered", type=int, default=0)
    parser.add_argument(
        "--superlink-host",
        default="127.0.0.1",
        metavar="NAME",
        help="the name the SuperNodes dial the SuperLink by (default: 127.0.0.1)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("outputs/node-state"),
        help="each SuperNode keeps its state for resumed runs in DIR/node-<i>",
    )
    args = parser.parse_args()
    nodes = args.nodes if args.nodes is not None else len(args.data_path) or 2
    if args.data_path and len(args.data_path) != nodes:
        parser.error(f"{len(args.data_path)} --data-path for {nodes} nodes")
    if args.auth and args.tls is None:
        parser.error("--auth needs --tls DIR (node authentication runs over TLS)")
    for path in args.data_path:
        if not path.is_file():
            parser.error(f"--data-path {path}: no such file")
    node_configs = [
        {
            **(
                {"data-path": str(args.data_path[i].resolve())}
                if args.data_path
                else {"partition-id": i, "num-partitions": nodes}
            ),
            "state-dir": str((args.state_dir / f"node-{i}").resolve()),
        }
        for i in range(nodes)
    ]
    register = [i < nodes - args.unregistered for i in range(nodes)]
    creds = credentials(args.tls, nodes) if args.tls else None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalDeployment(
        node_configs,
        credentials=creds,
        authenticate=args.auth,
        register=register,
        superlink_host=args.superlink_host,
    ) as deployment:
        link = deployment.link
        certs = f" simulation.root_certificates={creds.ca_cert}" if creds else ""
        print(
            f"SuperLink at {link.address} ({'TLS' if creds else 'insecure'}"
            f"{', node authentication' if args.auth else ''}; SuperNodes dial "
            f"{deployment.superlink_address(0) if nodes else '-'}); "
            f"{deployment.online_nodes()} SuperNode(s) online.\n"
            f"Submit with Hydra:\n  uv run python run_simulation.py "
            f"simulation=deployment simulation.address={link.address}{certs} "
            f"num_clients={sum(register)} clients_per_round={sum(register)} "
            f"evaluate_clients_per_round=0\n"
            f"or with flwr:\n  FLWR_HOME={link.home} flwr run . fl-dnn --stream "
            f"--run-config 'num-clients={sum(register)} "
            f"clients-per-round={sum(register)} evaluate-clients-per-round=0'\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
