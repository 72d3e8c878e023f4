"""Hydra entry point: compose ``conf/``, then run the Flower app in Flower's runtime.

    uv run python run_simulation.py                          # default experiment
    uv run python run_simulation.py num_rounds=5 partition=iid
    uv run python run_simulation.py -m partition.alpha=0.1,0.5,1.0   # one run per job

Each job validates its configuration first (exit code 2 with the offending key on a
bad value), then starts its own SuperLink in simulation mode, submits the app with
``flwr run``, streams progress, and leaves its results in the job's output directory.
A failed Flower run exits with code 1 and Flower's error.

``resume=DIR`` continues the run in ``DIR`` from its last checkpoint to the round count
it was configured with (``num_rounds=N`` beside it extends the run; every other key
must equal the checkpoint's; results appended there).

``simulation=deployment simulation.address=HOST:PORT`` submits to a running SuperLink
instead (its SuperNodes hold the data); ``simulation.root_certificates=CA_FILE`` for
a TLS SuperLink.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import fl_app  # noqa: F401  (environment for TensorFlow in child processes)
from fl_app.core.checkpoint import (
    CheckpointError,
    RunLock,
    check_resumable,
    latest_checkpoint,
    resumed_rounds,
)
from fl_app.core.config import (
    ConfigError,
    default_run_config,
    flatten_nested,
    parse_run_config,
)
from fl_app.core.results import append_sweep_row
from fl_app.deploy.cluster import ClusterError
from fl_app.deploy.launcher import (
    FlowerRunError,
    SuperLinkConnection,
    run_app,
    run_simulation,
)

log = logging.getLogger("run_simulation")

PROGRESS_MARKERS = (
    "fl-dnn:",
    "ERROR",
    "Error",
    "Traceback",
    "Successfully started run",
)


def overridden_keys(overrides: list[str]) -> set[str]:
    """Return the config keys a Hydra command line sets (``a.b=1``, ``+c=2`` ...)."""
    return {o.lstrip("+~").split("=", 1)[0] for o in overrides}


def check_resume(run_config: dict, rounds_given: bool) -> Path:
    """Check a ``resume=PATH`` run before anything starts; return PATH, absolute.

    The run continues in PATH: its last checkpoint must be whole, its run config
    the same but for ``num_rounds``, and no process may still be writing there
    (an orphan of the killed run, say). Without ``num_rounds`` on the command line
    (``rounds_given``) it runs to the checkpoint's own round count: ``run_config``
    is updated in place. The ServerApp checks it all again.
    """
    output_dir = Path(run_config["resume"]).expanduser().resolve()
    run_config["resume"] = str(output_dir)
    checkpoint = latest_checkpoint(output_dir)
    run_config.update(resumed_rounds(checkpoint, run_config, rounds_given))
    check_resumable(checkpoint, {**default_run_config(), **run_config})
    RunLock(output_dir).acquire().release()
    log.info("resuming %s after round %d", output_dir, checkpoint.round)
    return output_dir


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Run one federated experiment; return its final central accuracy."""
    run_config = flatten_nested(OmegaConf.to_container(cfg, resolve=True))
    try:
        parsed = parse_run_config(run_config)
    except ConfigError as err:
        log.error("invalid configuration: %s", err)
        sys.exit(2)

    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    if parsed.checkpoint.resume:
        try:
            output_dir = check_resume(
                run_config,
                rounds_given="num_rounds" in overridden_keys(hydra_cfg.overrides.task),
            )
        except CheckpointError as err:
            log.error("%s", err)
            sys.exit(2)
    sim = cfg.simulation

    def echo(line: str) -> None:
        if sim.verbose or (
            any(marker in line for marker in PROGRESS_MARKERS) and "cuInit" not in line
        ):
            print(line, flush=True)

    try:
        if sim.get("address"):  # a deployed SuperLink
            certificates = sim.get("root_certificates")
            with SuperLinkConnection(
                sim.address, Path(certificates) if certificates else None
            ) as link:
                outcome = run_app(
                    link,
                    run_config,
                    output_dir=output_dir,
                    timeout_s=sim.timeout_s,
                    echo=echo,
                )
        else:
            outcome = run_simulation(
                run_config,
                output_dir=output_dir,
                num_supernodes=parsed.num_clients,
                client_num_cpus=sim.client_num_cpus,
                client_num_gpus=sim.client_num_gpus,
                ray_address=sim.ray_address,
                timeout_s=sim.timeout_s,
                echo=echo,
            )
    except (FlowerRunError, ClusterError) as err:
        log.error("%s", err)
        sys.exit(1)
    except ValueError as err:  # a simulation setting Flower or Ray would refuse
        log.error("invalid simulation setting: %s", err)
        sys.exit(2)

    summary = outcome.summary
    log.info(
        "final central accuracy %.4f after %d rounds in %.1fs; results in %s",
        summary["final_accuracy"],
        summary["rounds"],
        summary["wall_time_s"],
        output_dir,
    )
    if hydra_cfg.mode == RunMode.MULTIRUN:
        append_sweep_row(
            Path(hydra_cfg.sweep.dir),
            list(hydra_cfg.overrides.task),
            output_dir,
            summary,
        )
    return float(summary["final_accuracy"])


if __name__ == "__main__":
    main()
