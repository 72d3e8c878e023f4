"""Write TLS and SuperNode-authentication files for a local Flower deployment.

    uv run python scripts/make_credentials.py --out certs --nodes 2

writes ``ca.crt`` (a private CA), ``server.pem``/``server.key`` (the SuperLink's
certificate for localhost and 127.0.0.1, add names with ``--host``), and
``supernode-<i>``/``supernode-<i>.pub`` (one ECDSA key pair per SuperNode, OpenSSH
format, as Flower's SuperNode authentication expects).
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
        help="extra host name or IP for the server certificate (repeatable)",
    )
    args = parser.parse_args()
    if args.nodes < 0:
        parser.error("--nodes must be >= 0")
    files = make_credentials(
        args.out, args.nodes, hosts=("localhost", "127.0.0.1", *args.host)
    )
    print(f"CA: {files.ca_cert}\nSuperLink: {files.server_cert}, {files.server_key}")
    for private, public in files.node_keys:
        print(f"SuperNode key: {private} (register {public})")


if __name__ == "__main__":
    main()
