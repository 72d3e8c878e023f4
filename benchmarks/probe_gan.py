"""A fast in-process replay of the GAN phase on MNIST's pathological split: TSTR.

Trying a GAN setting through ``bench_label_skew.py`` costs a whole run (12-20 min on
two cores: Flower's simulation, the classifier's 100 rounds). This replays only the
GAN phase in one process, with the project's own pieces: the preset's clients
(``fedavg_mnist_2nn_shards``: 100 clients of two classes), ``GanTrainer`` for each
sampled client's local steps (Adam state reset per client, as on a node; DP-SGD
steps on Poisson batches with ``--dp``), ``aggregate_weighted`` for the average of
both networks. Every ``--every`` rounds and after the last it scores TSTR: the 2NN
(the preset's ``mlp``, SGD at its rate, batch 10) trained only on 1,000 generated
rows per class and tested on the real test set (3 epochs between, 10 after the
last, as the run's ``synthetic-tstr-epochs``). Clients are sampled from a seed of
this script's own, not the run's, so figures agree with a run's in trend, not to
the digit.

    uv run python benchmarks/probe_gan.py --out FILE [--rounds 15 --steps 60 ...]

``--central`` trains one "client" holding every training row (no averaging): what
the same number of steps reaches without federation.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import write_json  # noqa: E402

PRESET = "fedavg_mnist_2nn_shards"


def parse_args() -> argparse.Namespace:
    """Return the probe's settings."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=15, help="GAN rounds")
    p.add_argument("--steps", type=int, default=60, help="batches per client")
    p.add_argument("--clients", type=int, default=10, help="clients per round")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--labels", choices=("uniform", "local"), default="local")
    p.add_argument("--class-weight", type=float, default=1.0)
    p.add_argument("--diversity", type=float, default=0.0)
    p.add_argument("--g-lr", type=float, default=1e-3)
    p.add_argument("--d-lr", type=float, default=4e-3)
    p.add_argument("--discriminator-steps", type=int, default=1)
    p.add_argument("--dp", type=float, default=0.0, help="noise multiplier; 0: off")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--every", type=int, default=5, help="TSTR every this many rounds")
    p.add_argument("--central", action="store_true")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    from bench_mnist import preset_config

    from fl_app.core.config import parse_run_config
    from fl_app.data import ArrayDataset
    from fl_app.data.federated import load_federated_data
    from fl_app.features.privacy.dpsgd import epsilon, poisson_batches
    from fl_app.features.synthetic.gan import GanDp, GanTrainer
    from fl_app.ml.training import (
        evaluate_model,
        get_compiled_model,
        model_key,
        train_local,
    )
    from strategies.aggregation import aggregate_weighted

    cfg = parse_run_config({**preset_config(PRESET), "save-model": False})
    data = load_federated_data(cfg)
    shape, classes = data.input_shape, data.num_classes
    clients = [c.train for c in data.clients]
    if args.central:
        clients = [
            ArrayDataset(
                np.concatenate([c.x for c in clients]),
                np.concatenate([c.y for c in clients]),
            )
        ]
    dp = GanDp(args.clip, args.dp) if args.dp else None
    trainer = GanTrainer(
        shape,
        classes,
        learning_rate=args.g_lr,
        discriminator_learning_rate=args.d_lr,
        seed=0,
        dp=dp,
        class_weight=args.class_weight,
        diversity_weight=args.diversity,
        generator_labels=args.labels,
    )
    generator, discriminator = trainer.get_weights()
    key = replace(model_key(cfg, shape, classes), techniques=())  # as the server's
    classifier = get_compiled_model(key, cfg.seed)
    initial = classifier.get_weights()
    steps_taken = np.zeros(len(clients), int)

    def tstr(epochs: int) -> float:
        rng = np.random.default_rng(5)
        trainer.generator.set_weights(generator)
        labels = np.repeat(np.arange(classes), 1000)
        rows = ArrayDataset(trainer.sample(labels, rng), labels)
        classifier.set_weights(initial)
        settings = replace(cfg.client.at_round(1), local_epochs=epochs)
        train_local(classifier, rows, settings, rng)
        return evaluate_model(classifier, data.test)[1]

    log, started = [], time.perf_counter()
    for server_round in range(1, args.rounds + 1):
        rng = np.random.default_rng([0, server_round])
        chosen = rng.choice(len(clients), min(args.clients, len(clients)), False)
        replies, losses = [], []
        for pid in chosen:
            trainer.set_weights(generator, discriminator)
            trainer.reset_optimizers()
            rows, n = clients[pid], len(clients[pid])
            crng = np.random.default_rng([0, server_round, int(pid)])
            if dp:
                batches = poisson_batches(n, min(args.batch / n, 1), args.steps, crng)
                steps_taken[pid] += args.steps
            else:
                size = min(args.batch, n)
                batches = [crng.choice(n, size, False) for _ in range(args.steps)]
            for i, idx in enumerate(batches, start=1):
                if len(idx):
                    both = i % args.discriminator_steps == 0
                    losses.append(trainer.step(rows.x[idx], rows.y[idx], crng, both))
            replies.append((trainer.get_weights(), n))
        generator = aggregate_weighted([(g, n) for (g, _), n in replies])
        discriminator = aggregate_weighted([(d, n) for (_, d), n in replies])
        row = {
            "round": server_round,
            "d_loss": float(np.mean([d for d, _ in losses])),
            "g_loss": float(np.nanmean([g for _, g in losses])),
            "wall_s": time.perf_counter() - started,
        }
        if dp:
            q = min(args.batch / len(clients[0]), 1)
            row["epsilon_max"] = epsilon(int(steps_taken.max()), q, args.dp, 1e-5)
        last = server_round == args.rounds
        if last or server_round % args.every == 0:
            row["tstr_accuracy"] = tstr(10 if last else 3)
        log.append(row)
        print(row, flush=True)
    settings = {**vars(args), "out": str(args.out)}
    write_json(args.out, {"settings": settings, "rounds": log})


if __name__ == "__main__":
    main()
