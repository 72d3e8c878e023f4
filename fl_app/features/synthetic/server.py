"""The server's side of synthetic data: the GAN phase before the classifier's rounds.

With ``synthetic=gan``, :func:`gan_phase` runs before the round workflow (a phase
registered with :func:`fl_app.server_app.register_phase`):

1. ``synthetic-rounds`` GAN rounds: the sampled clients (by partition id, from the
   run's seed, :class:`fl_app.core.exchange.NodeExchange`) receive the generator and the
   discriminator (``train.gan``), train both on their real rows and send them back;
   each reply is checked like a model update (layers, shapes, dtypes, finite
   values, a positive row count) and the accepted ones are averaged, weighted by
   row count (:func:`strategies.aggregation.aggregate_weighted`). Each round's
   record goes to ``metrics.jsonl`` with ``"phase": "gan"``: losses, bytes, the
   clients' ε with ``synthetic-dp``.
2. Every node receives the final generator (``train.gan_fill``) and replies with
   how many real and generated rows of each class it will train on.

After the classifier's rounds, :func:`synthetic_summary` saves the final generator
(``generator.keras``), a grid of its samples per class (``synthetic_samples.png``,
image datasets) and the TSTR score (a fresh classifier trained only on generated
rows, balanced, tested on the real central test set).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fl_app.core.config import RunConfig
from fl_app.core.exchange import NodeExchange, RoundTally, accept_replies, arrays
from fl_app.core.results import _pyplot, _save
from fl_app.data import ArrayDataset
from fl_app.features.synthetic.gan import GAN_FILL, GAN_TRAIN, GanTrainer
from fl_app.ml.training import evaluate_model, train_local
from fl_app.server.registry import (
    register_phase,
    register_summary_part,
    register_unresumable,
)
from fl_app.server.run import ServerRun
from strategies.aggregation import aggregate_weighted, check_update

log = logging.getLogger(__name__)

GENERATOR_FILE = "generator.keras"
SAMPLES_FILE = "synthetic_samples.png"
SAMPLES_PER_CLASS = 8
GAN_STREAM = 3  # sampling stream of the GAN rounds (fl_app.core.exchange.sample)
TSTR_STREAM = 5


class GanServer(NodeExchange):
    """The GAN phase of one run: the two networks, the rounds, the fill step."""

    name = "synthetic"

    def __init__(self, run: ServerRun) -> None:
        super().__init__(run)
        syn = run.cfg.synthetic
        self.trainer = GanTrainer(
            run.data.input_shape,
            run.data.num_classes,
            latent_dim=syn.latent_dim,
            learning_rate=syn.generator_learning_rate,
            discriminator_learning_rate=syn.discriminator_learning_rate,
            seed=run.cfg.seed,
            class_weight=syn.class_weight,
            diversity_weight=syn.diversity_weight,
            generator_labels=syn.generator_labels,
        )
        self.generator, self.discriminator = self.trainer.get_weights()

    def _accept(
        self, replies: dict[int, RecordDict], tally: RoundTally
    ) -> list[tuple[int, list, list, int, dict]]:
        """Return ``(node, generator, discriminator, rows, result)`` per good reply."""

        def read(content: RecordDict) -> tuple[tuple, int]:
            result = dict(content.config_records["result"])
            rows = int(result["num_examples"])
            result["d_loss"] = float(result["d_loss"])
            result["g_loss"] = float(result["g_loss"])
            networks = (arrays(content, "generator"), arrays(content, "discriminator"))
            return (*networks, result), rows

        def check(payload: tuple) -> str | None:
            generator, discriminator, _ = payload
            return check_update(self.generator, generator) or check_update(
                self.discriminator, discriminator
            )

        accepted = accept_replies(
            replies,
            self.by_partition(replies),
            read,
            check,
            tally,
            "synthetic: GAN update",
            "a reply without its networks, row count or losses",
        )
        return [(node, g, d, rows, result) for node, (g, d, result), rows in accepted]

    def run_round(self, server_round: int) -> dict[str, Any]:
        """Train, check and average one GAN round; return its record."""
        started = time.perf_counter()
        tally = RoundTally.for_round(self.cfg.round_timeout)
        nodes = self.sample(server_round, self.cfg.clients_per_round, GAN_STREAM)
        networks = {
            "generator": ArrayRecord(numpy_ndarrays=self.generator),
            "discriminator": ArrayRecord(numpy_ndarrays=self.discriminator),
            "config": ConfigRecord({"server_round": server_round}),
        }
        replies = self.exchange(
            {n: RecordDict(networks) for n in nodes}, GAN_TRAIN, server_round, tally
        )
        accepted = self._accept(replies, tally)
        tally.check_not_all_failed(f"synthetic: GAN round {server_round}", len(nodes))
        if accepted:  # else (all rejected) both networks stay as they were
            self.generator = aggregate_weighted([(g, k) for _, g, _, k, _ in accepted])
            self.discriminator = aggregate_weighted(
                [(d, k) for _, _, d, k, _ in accepted]
            )
        rows = sum(k for *_, k, _ in accepted)

        def mean(name: str) -> float | None:
            return sum(r[name] * k for *_, k, r in accepted) / rows if rows else None

        clients = [
            {
                "partition_id": self.partitions[n],
                "num_examples": k,
                "d_loss": r["d_loss"],
                "g_loss": r["g_loss"],
                **({"epsilon": r["epsilon"]} if "epsilon" in r else {}),
                "bytes_up": tally.up.get(n, 0),
                "bytes_down": tally.down.get(n, 0),
            }
            for n, _, _, k, r in accepted
        ]
        epsilons = [c["epsilon"] for c in clients if "epsilon" in c]
        return {
            "phase": "gan",
            "round": server_round,
            "gan_d_loss": mean("d_loss"),
            "gan_g_loss": mean("g_loss"),
            "epsilon_gan_max": max(epsilons) if epsilons else None,
            "bytes_up": sum(tally.up.values()),
            "bytes_down": sum(tally.down.values()),
            "num_failures": len(tally.failures),
            "num_rejected": len(tally.rejected),
            "rejected": [
                {"partition_id": self.partitions.get(n), "reason": r}
                for n, r in tally.rejected.items()
            ],
            "clients": clients,
            "wall_time_s": time.perf_counter() - started,
        }

    def fill(self) -> tuple[list[dict[str, Any]], int]:
        """Send every node the final generator; return its row counts and the bytes.

        Row counts are one dict per node that answered; bytes: the generator sent.
        """
        tally = RoundTally.for_round(self.cfg.round_timeout)
        final = ArrayRecord(numpy_ndarrays=self.generator)
        replies = self.exchange(
            {
                n: RecordDict({"generator": final})
                for n in self.by_partition(self.partitions)
            },
            GAN_FILL,
            0,
            tally,
        )
        counts = []
        keys = (
            "partition_id",
            "num_real",
            "num_synthetic",
            "real_by_class",
            "synthetic_by_class",
        )
        for node in self.by_partition(replies):
            try:
                result = replies[node].config_records["result"]
                counts.append({key: result[key] for key in keys})
            except KeyError as err:  # the node keeps the generator all the same
                log.warning(
                    "synthetic: node %s's fill reply lacks %s; its counts are "
                    "left out of the summary",
                    node,
                    err,
                )
        for node, reason in tally.failures.items():
            log.warning(
                "synthetic: node %s did not take the final generator (%s); it trains "
                "on its real rows only",
                node,
                reason,
            )
        return counts, sum(tally.down.values())


def gan_phase(run: ServerRun) -> None:
    """Train the federated GAN and hand every node the final generator."""
    syn = run.cfg.synthetic
    if syn is None:
        return
    started = time.perf_counter()
    server = GanServer(run)
    log.warning(
        "synthetic=gan: generated rows can reproduce clients' real rows, and each "
        "client's fill counts imply its label distribution (docs/synthetic.md)%s",
        "" if syn.dp else "; synthetic-dp=false: no privacy guarantee",
    )
    initial = run.model.get_weights()
    server.discover(run.cfg.clients_per_round)
    for server_round in range(1, syn.rounds + 1):
        row = server.run_round(server_round)
        run.recorder.write_phase_round(row, syn.rounds)
    counts, fill_bytes = server.fill()
    run.phases["synthetic"] = {
        "fill_bytes_down": fill_bytes,
        "generator": server.generator,
        "trainer": server.trainer,
        "initial_weights": initial,
        "counts": counts,
        "wall_time_s": time.perf_counter() - started,
    }


register_phase(gan_phase)


@register_unresumable
def gan_unresumable(cfg: RunConfig) -> str | None:
    """Say why a GAN run is not resumable: its phase is not checkpointed."""
    return "a run with the GAN phase" if cfg.synthetic is not None else None


def tstr(run: ServerRun, trainer: GanTrainer, initial: list[np.ndarray]) -> float:
    """Train a fresh classifier on generated rows only; its central test accuracy.

    ``synthetic-tstr-rows`` rows of every class from the final generator, the run's
    client settings for ``synthetic-tstr-epochs`` epochs, from the run's initial
    weights; the server's model is restored afterwards.
    """
    syn, model = run.cfg.synthetic, run.model
    rng = np.random.default_rng([run.cfg.seed, TSTR_STREAM])
    labels = np.repeat(np.arange(run.data.num_classes), syn.tstr_rows)
    rows = ArrayDataset(trainer.sample(labels, rng), labels)
    saved = model.get_weights()
    try:
        model.set_weights(initial)
        settings = replace(run.cfg.client.at_round(1), local_epochs=syn.tstr_epochs)
        train_local(model, rows, settings, rng)
        return evaluate_model(model, run.data.test)[1]
    finally:
        model.set_weights(saved)


@register_summary_part
def synthetic_summary(run: ServerRun, weights: list[np.ndarray]) -> dict[str, Any]:
    """Save the generator and its samples; report row counts, ε, TSTR, times."""
    if run.cfg.synthetic is None or "synthetic" not in run.phases:
        return {}
    phase = run.phases["synthetic"]
    trainer: GanTrainer = phase["trainer"]
    trainer.generator.set_weights(phase["generator"])
    out = run.recorder.output_dir
    trainer.generator.save(out / GENERATOR_FILE)
    if len(run.data.input_shape) == 3:
        save_sample_grid(
            trainer, run.data.num_classes, run.cfg.seed, out / SAMPLES_FILE
        )
    started = time.perf_counter()
    score = tstr(run, trainer, phase["initial_weights"])
    counts = phase["counts"]
    real = sum(c["num_real"] for c in counts)
    synthetic = sum(c["num_synthetic"] for c in counts)
    gan_rows = run.recorder.phase_rows
    epsilons = [
        r["epsilon_gan_max"] for r in gan_rows if r["epsilon_gan_max"] is not None
    ]
    return {
        "synthetic": run.cfg.synthetic.mode,
        "gan_rounds": len(gan_rows),
        "gan_wall_time_s": phase["wall_time_s"],
        "gan_bytes_up": sum(r["bytes_up"] for r in gan_rows),
        "gan_bytes_down": sum(r["bytes_down"] for r in gan_rows),
        "gan_fill_bytes_down": phase["fill_bytes_down"],
        "gan_final_d_loss": gan_rows[-1]["gan_d_loss"] if gan_rows else None,
        "gan_final_g_loss": gan_rows[-1]["gan_g_loss"] if gan_rows else None,
        "epsilon_gan_max": max(epsilons) if epsilons else None,
        "synthetic_real_rows": real,
        "synthetic_rows": synthetic,
        "synthetic_to_real_ratio": synthetic / real if real else math.nan,
        "synthetic_clients": counts,
        "tstr_accuracy": score,
        "tstr_wall_time_s": time.perf_counter() - started,
    }


def save_sample_grid(trainer: GanTrainer, num_classes: int, seed: int, path) -> None:
    """Save a PNG grid: one row per class, ``SAMPLES_PER_CLASS`` generated images."""
    rng = np.random.default_rng([seed, TSTR_STREAM + 1])
    labels = np.repeat(np.arange(num_classes), SAMPLES_PER_CLASS)
    images = np.clip(trainer.sample(labels, rng), 0.0, 1.0)
    plt = _pyplot()
    fig, axes = plt.subplots(
        num_classes,
        SAMPLES_PER_CLASS,
        figsize=(SAMPLES_PER_CLASS * 0.8, num_classes * 0.8),
        squeeze=False,
    )
    for i, (ax, image) in enumerate(zip(axes.flat, images, strict=True)):
        gray = image.shape[-1] == 1
        ax.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None)
        ax.set_xticks([])
        ax.set_yticks([])
        if i % SAMPLES_PER_CLASS == 0:
            ax.set_ylabel(str(labels[i]), rotation=0, labelpad=10)
    fig.suptitle("generated samples per class (final generator)")
    _save(plt, fig, path)
