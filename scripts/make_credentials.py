"""Write TLS and SuperNode-authentication files for a Flower deployment.

    uv run python scripts/make_credentials.py --out certs --nodes 2
    uv run python scripts/make_credentials.py --out certs --nodes 2 \
        --host superlink.example.org --host 10.1.2.3

writes ``ca.crt`` (a private CA), ``server.pem``/``server.key`` (the SuperLink's
certificate, valid for localhost, 127.0.0.1 and every ``--host``: each name or IP
address SuperNodes and ``flwr`` users reach the SuperLink by), and
``supernode-<i>``/``supernode-<i>.pub`` (one ECDSA key pair per SuperNode, OpenSSH
format, as Flower's SuperNode authentication expects), then prints which file goes
to which host (docs/deployment.md). Files already in ``--out`` are replaced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fl_app.deploy.deployment import make_credentials  # noqa: E402


def main() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        help="host name or IP address the SuperLink is reached by (repeatable; "
        "localhost and 127.0.0.1 are always included)",
    )
    args = parser.parse_args()
    if args.nodes < 0:
        parser.error("--nodes must be >= 0")
    files = make_credentials(args.out, args.nodes, hosts=args.host)
    print(
        f"SuperLink host: {files.ca_cert}, {files.server_cert}, {files.server_key}\n"
        f"flwr user (runs and registration): {files.ca_cert}"
    )
    for i, (private, public) in enumerate(files.node_keys):
        print(
            f"SuperNode {i}: host gets {files.ca_cert}, {private}; "
            f"flwr user registers {public}"
        )


if __name__ == "__main__":
    main()
