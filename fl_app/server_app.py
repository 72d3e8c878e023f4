"""The Flower ServerApp (``fl_app.server_app:app``): the run, with every feature.

This entry module loads every feature's server part (``fl_app.features.load``),
which registers its strategies, workflows, phases and summary parts
(``fl_app.server.registry``); the run itself (``fl_app.server.run``) knows them
only through those registries. Results go to the absolute ``output-dir`` of the
run config, because Flower discards the final Context.
"""

from __future__ import annotations

import time

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from fl_app import features
from fl_app.core.checkpoint import RunLock
from fl_app.core.config import parse_run_config
from fl_app.server.run import (
    log_to_console,
    resolve_output_dir,
    resume_point,
    rounds_given,
    run_server,
)

features.load("server")  # every feature's server part registers itself

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run federated training and write the results."""
    started = time.perf_counter()
    cfg = parse_run_config(context.run_config)
    output_dir = resolve_output_dir(cfg, context.run_id)
    log_to_console()
    # a bad checkpoint fails here, before anything is written
    resumed = resume_point(cfg, context, output_dir, rounds_given(grid))
    if resumed is not None:  # resume alone runs to the checkpoint's round count:
        cfg = parse_run_config(context.run_config)  # checked again with it
    with RunLock(output_dir):
        run_server(grid, context, cfg, output_dir, started, resumed)
