"""The node's side of synthetic data: GAN rounds, the final generator, balancing.

With ``synthetic=gan`` the ServerApp runs a GAN phase before the classifier's rounds
(:mod:`fl_app.features.synthetic.server`); the nodes answer its messages here:

- ``train.gan``: the round's generator and discriminator arrive; the node trains
  both on its real training rows for ``synthetic-local-steps`` mini-batches (the
  generator on every ``synthetic-discriminator-steps``-th)
  (:class:`fl_app.features.synthetic.gan.GanTrainer`; with ``synthetic-dp`` the
  discriminator takes
  DP-SGD steps on Poisson-sampled batches, the steps are accounted in the node state
  and the node's ε is reported) and replies with both networks, its row count and
  losses;
- ``train.gan_fill``: the final generator arrives; the node keeps it in its state
  and replies with how many real and generated rows of each class it will train on.

Balancing (:func:`with_synthetic_rows`): when the node state holds the final
generator, the client's *training* rows get generated rows for its missing and
minority classes (``synthetic-fill``); its validation rows are never touched. The
generated rows are drawn from a seed of their own (run seed, partition id), so
every message of a run regenerates the same rows; a per-process cache keeps them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import replace

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

import fl_app  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from fl_app.client.keras_client import KerasClient, register_client_data
from fl_app.client.node_data import client_data, node_partition
from fl_app.core.config import RunConfig, parse_run_config
from fl_app.core.exchange import arrays, register_handler, require_feature
from fl_app.data import ArrayDataset, ClientData
from fl_app.features.synthetic.gan import (
    GAN_FILL,
    GAN_TRAIN,
    GanDp,
    GanTrainer,
    fill_counts,
)
from fl_app.features.synthetic.settings import SyntheticConfig
from fl_app.ml.training import configure_tensorflow

log = logging.getLogger(__name__)

SYNTHETIC_TYPES = frozenset({GAN_TRAIN, GAN_FILL})

STATE_GENERATOR = "fl-dnn.synthetic.generator"
STATE_PRIVACY = "fl-dnn.synthetic.privacy"  # config record: DP steps taken so far
FILL_STREAM = 11  # seeds the generated fill rows: (seed, partition id, FILL_STREAM)


@functools.cache
def get_trainer(
    shape: tuple[int, ...], num_classes: int, synthetic: SyntheticConfig, seed: int
) -> GanTrainer:
    """Return this process's GAN trainer for one shape and setting (traced once).

    Its weights and optimizer state are set on every use, so clients served by the
    same process share nothing through it.
    """
    dp = None
    if synthetic.dp:
        dp = GanDp(synthetic.dp_l2_norm_clip, synthetic.dp_noise_multiplier)
    return GanTrainer(
        shape,
        num_classes,
        latent_dim=synthetic.latent_dim,
        learning_rate=synthetic.generator_learning_rate,
        discriminator_learning_rate=synthetic.discriminator_learning_rate,
        seed=seed,
        dp=dp,
        class_weight=synthetic.class_weight,
        diversity_weight=synthetic.diversity_weight,
        generator_labels=synthetic.generator_labels,
    )


def gan_epsilon(synthetic: SyntheticConfig, steps: int, num_examples: int) -> float:
    """ε of ``steps`` DP discriminator steps on ``num_examples`` rows (RDP)."""
    from fl_app.features.privacy.dpsgd import epsilon

    q = min(synthetic.batch_size / num_examples, 1.0)
    return epsilon(steps, q, synthetic.dp_noise_multiplier, synthetic.dp_delta)


class SyntheticNode:
    """One node's GAN-phase handlers over its data and node state."""

    def __init__(self, cfg: RunConfig, context: Context) -> None:
        configure_tensorflow()
        self.cfg = cfg
        self.synthetic: SyntheticConfig = cfg.synthetic
        self.partition_id, data_path = node_partition(
            cfg, context.node_config, context.node_id
        )
        self.data, self.shape, self.num_classes = client_data(
            cfg, self.partition_id, data_path
        )
        self.state = context.state

    def train(self, content: RecordDict) -> RecordDict:
        """Train the received GAN on the real training rows; reply with both nets."""
        syn = self.synthetic
        server_round = int(content.config_records["config"]["server_round"])
        trainer = get_trainer(self.shape, self.num_classes, syn, self.cfg.seed)
        trainer.set_weights(
            arrays(content, "generator"), arrays(content, "discriminator")
        )
        trainer.reset_optimizers()
        rng = np.random.default_rng([self.cfg.seed, server_round, self.partition_id])
        train = self.data.train
        n = len(train)
        if syn.dp:  # Poisson sampling: the sampling the accountant assumes
            from fl_app.features.privacy.dpsgd import poisson_batches

            q = min(syn.batch_size / n, 1.0)
            batches = poisson_batches(n, q, syn.local_steps, rng)
        else:
            size = min(syn.batch_size, n)
            batches = [
                rng.choice(n, size=size, replace=False) for _ in range(syn.local_steps)
            ]
        d_losses, g_losses = [], []
        for i, idx in enumerate(batches, start=1):
            if len(idx) == 0:  # an empty Poisson batch: nothing to learn from
                continue
            both = i % syn.discriminator_steps == 0  # else the discriminator only
            d_loss, g_loss = trainer.step(train.x[idx], train.y[idx], rng, both)
            d_losses.append(d_loss)
            if both:
                g_losses.append(g_loss)
        generator, discriminator = trainer.get_weights()
        result: dict = {
            "partition_id": self.partition_id,
            "num_examples": n,
            "d_loss": float(np.mean(d_losses)) if d_losses else float("nan"),
            "g_loss": float(np.mean(g_losses)) if g_losses else float("nan"),
        }
        if syn.dp:
            from fl_app.features.privacy.dpsgd import add_steps

            steps = add_steps(self.state, STATE_PRIVACY, syn.local_steps)
            result["epsilon"] = gan_epsilon(syn, steps, n)
        return RecordDict(
            {
                "generator": ArrayRecord(numpy_ndarrays=generator),
                "discriminator": ArrayRecord(numpy_ndarrays=discriminator),
                "result": ConfigRecord(result),
            }
        )

    def fill(self, content: RecordDict) -> RecordDict:
        """Keep the final generator; reply with the real and generated row counts."""
        generator = arrays(content, "generator")
        trainer = get_trainer(
            self.shape, self.num_classes, self.synthetic, self.cfg.seed
        )
        expected = [w.shape for w in trainer.generator.get_weights()]
        if [w.shape for w in generator] != expected:
            raise ValueError(
                f"final generator of shapes {[w.shape for w in generator]}, "
                f"expected {expected}"
            )
        self.state.array_records[STATE_GENERATOR] = ArrayRecord(
            numpy_ndarrays=generator
        )
        labels = self.data.train.y
        real = np.bincount(labels, minlength=self.num_classes)
        added = fill_counts(labels, self.num_classes, self.synthetic.target)
        return RecordDict(
            {
                "result": ConfigRecord(
                    {
                        "partition_id": self.partition_id,
                        "num_real": int(real.sum()),
                        "num_synthetic": int(added.sum()),
                        "real_by_class": [int(v) for v in real],
                        "synthetic_by_class": [int(v) for v in added],
                    }
                )
            }
        )


def synthetic_handler(msg: Message, context: Context) -> RecordDict:
    """Answer one GAN-phase message from this node's data and state."""
    message_type = msg.metadata.message_type
    cfg = parse_run_config(context.run_config)
    require_feature(cfg.synthetic, "synthetic", message_type)
    node = SyntheticNode(cfg, context)
    if message_type == GAN_TRAIN:
        return node.train(msg.content)
    return node.fill(msg.content)


register_handler(SYNTHETIC_TYPES, synthetic_handler)


# -- balancing ----------------------------------------------------------------------


# (generator digest, partition id, counts, shape, setting, seed) -> generated rows
_GENERATED: dict[tuple, ArrayDataset] = {}
_GENERATED_MAX = 32


def _generated(
    generator: list[np.ndarray],
    partition_id: int,
    counts: np.ndarray,
    shape: tuple[int, ...],
    synthetic: SyntheticConfig,
    seed: int,
) -> ArrayDataset:
    """Generate ``counts[c]`` rows of each class ``c`` (cached per process)."""
    digest = hashlib.sha256(b"".join(w.tobytes() for w in generator)).hexdigest()
    key = (digest, partition_id, tuple(int(c) for c in counts), shape, synthetic, seed)
    if key not in _GENERATED:
        trainer = get_trainer(shape, len(counts), synthetic, seed)
        trainer.generator.set_weights(generator)
        labels = np.repeat(np.arange(len(counts)), counts)
        rng = np.random.default_rng([seed, partition_id, FILL_STREAM])
        if len(_GENERATED) >= _GENERATED_MAX:
            _GENERATED.clear()
        _GENERATED[key] = ArrayDataset(trainer.sample(labels, rng), labels)
    return _GENERATED[key]


def with_synthetic_rows(
    cfg: RunConfig,
    data: ClientData,
    state: RecordDict,
    partition_id: int,
    num_classes: int,
) -> tuple[ClientData, int]:
    """Add generated rows to ``data``'s training rows; return it and their count.

    Uses the final generator the GAN phase left in the node state; without one
    (before the GAN phase, or a node whose state was lost) the rows are unchanged.
    Validation rows are never changed.
    """
    if cfg.synthetic is None or STATE_GENERATOR not in state.array_records:
        if cfg.synthetic is not None:
            log.warning(
                "client %s has no final generator in its node state: training on "
                "its real rows only",
                partition_id,
            )
        return data, 0
    generator = state.array_records[STATE_GENERATOR].to_numpy_ndarrays()
    counts = fill_counts(data.train.y, num_classes, cfg.synthetic.target)
    rows = _generated(
        generator,
        partition_id,
        counts,
        tuple(data.train.x.shape[1:]),
        cfg.synthetic,
        cfg.seed,
    )
    if not len(rows.y):
        return data, 0
    train = ArrayDataset(
        np.concatenate([data.train.x, rows.x.astype(data.train.x.dtype)]),
        np.concatenate([data.train.y, rows.y.astype(data.train.y.dtype)]),
    )
    return replace(data, train=train), len(rows.y)


@register_client_data
def add_synthetic_rows(client: KerasClient, num_classes: int) -> None:
    """Add generated rows to a client's training rows (``synthetic=gan``).

    The client's update is still weighted by its real rows (``num_real``); the fit
    reply reports both counts.
    """
    if client.cfg.synthetic is None:
        return
    client.data, num_synthetic = with_synthetic_rows(
        client.cfg, client.data, client.state, client.partition_id, num_classes
    )
    client.row_metrics.update(num_real=client.num_real, num_synthetic=num_synthetic)
