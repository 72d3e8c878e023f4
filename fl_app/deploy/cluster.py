"""Simulations on an existing Ray cluster: what each node must have, checked first.

Flower's simulation runtime starts Ray with ``ray.init(...)``
(``flwr/server/superlink/fleet/vce/backend/raybackend.py``, ``RayBackend.init_ray``);
with ``RAY_ADDRESS`` in its environment that call joins the cluster at that address
instead of starting a private one, and then refuses ``num_cpus``/``num_gpus``
(Ray's ``ray.init``). So the launcher runs a cluster simulation by setting
``RAY_ADDRESS`` for the SuperLink it starts, and by passing no ``init-args``; no
runtime of our own.

Every node of the cluster may host a ClientApp, so every node must hold the same
project (the same code, the same locked packages) and the run's data. Before the
run, :func:`check_cluster` runs one small task pinned to each alive node that
reports what that node has; a node that differs from the launching machine, or
cannot load the run's data, stops the run with an error naming the node and what
is missing.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# The packages whose versions must agree between the launching machine and every
# node (the project's own code is compared by its digest, code_version).
PACKAGES = ("flwr", "ray", "tensorflow", "tf-keras", "numpy", "fl-dnn")


class ClusterError(RuntimeError):
    """The Ray cluster cannot serve this run (a node lacks what it needs)."""


@dataclass(frozen=True)
class NodeFacts:
    """What one machine has for a run: its code, packages and the run's data."""

    host: str
    python: str
    code: str
    packages: tuple[tuple[str, str], ...]
    data: str  # "ok" or why the run's data could not be loaded there


def node_facts(run_config: Mapping[str, Any]) -> NodeFacts:
    """Return this machine's facts for a run with ``run_config`` (flat keys).

    Loading the run's data builds it into this machine's data cache, which the
    run's clients then read (``fl_app.data.prepare_federated_data``).
    """
    from fl_app.core.checkpoint import code_version
    from fl_app.core.config import parse_run_config

    versions = []
    for name in PACKAGES:
        try:
            versions.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            versions.append((name, "missing"))
    try:
        from fl_app.data import prepare_federated_data

        prepare_federated_data(parse_run_config(run_config))
        data = "ok"
    except Exception as err:  # noqa: BLE001  (reported, naming the node)
        data = f"{type(err).__name__}: {err}"
    return NodeFacts(
        host=socket.gethostname(),
        python=platform.python_version(),
        code=code_version(),
        packages=tuple(versions),
        data=data,
    )


def _remote_facts(run_config: Mapping[str, Any]) -> NodeFacts:
    return node_facts(run_config)


def differences(here: NodeFacts, there: NodeFacts) -> list[str]:
    """Return what a node lacks or has otherwise than the launching machine."""
    found = []
    if there.python != here.python:
        found.append(f"Python {there.python} (here {here.python})")
    if there.code != here.code:
        found.append(
            f"fl-dnn code {there.code} (here {here.code}): install the same "
            "checkout on every node"
        )
    mine = dict(here.packages)
    for name, version in there.packages:
        if version != mine.get(name):
            found.append(
                f"{name} {version} (here {mine.get(name)}): install the project "
                "with the same uv.lock (`uv sync --frozen`)"
            )
    if there.data != "ok":
        found.append(f"the run's data: {there.data}")
    return found


def check_cluster(
    address: str, run_config: Mapping[str, Any], timeout_s: float = 300.0
) -> list[tuple[str, NodeFacts]]:
    """Check every alive node of the cluster at ``address`` can serve the run.

    Returns ``(node id, facts)`` per node. Raises :class:`ClusterError` naming each
    node that cannot import the project, differs from this machine, or cannot load
    the run's data. Connects as a short-lived driver and disconnects.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = node_facts(run_config)
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except Exception as err:  # noqa: BLE001  (ConnectionError and Ray's own)
        raise ClusterError(
            f"cannot connect to the Ray cluster at {address!r}: {err}"
        ) from err
    try:
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        task = ray.remote(num_cpus=0)(_remote_facts)
        pending = {
            node["NodeID"]: (
                node.get("NodeManagerAddress", "?"),
                task.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(
                        node["NodeID"], soft=False
                    )
                ).remote(dict(run_config)),
            )
            for node in nodes
        }
        found: list[tuple[str, NodeFacts]] = []
        problems: list[str] = []
        for node_id, (ip, ref) in pending.items():
            name = f"node {node_id[:12]} ({ip})"
            try:
                facts = ray.get(ref, timeout=timeout_s)
            except Exception as err:  # noqa: BLE001  (a task that cannot run there)
                lines = str(err).strip().splitlines() or [""]
                problems.append(
                    f"{name}: cannot run the project's code ({type(err).__name__}: "
                    f"{lines[-1]}); install the project with the same uv.lock on "
                    "every node"
                )
                continue
            found.append((node_id, facts))
            for difference in differences(here, facts):
                problems.append(f"{name}, host {facts.host}: {difference}")
    finally:
        ray.shutdown()
    if problems:
        raise ClusterError(
            "the Ray cluster cannot serve this run:\n  " + "\n  ".join(problems)
        )
    log.info(
        "Ray cluster at %s: %d node(s) checked (%s)",
        address,
        len(found),
        ", ".join(sorted({facts.host for _, facts in found})),
    )
    return found
