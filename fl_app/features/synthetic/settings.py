"""Settings of the federated GAN that balances clients (``synthetic-*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fl_app.core.config import fraction, non_negative, positive, refuse_first
from fl_app.core.schema import fail, register_section, setting

if TYPE_CHECKING:
    from fl_app.core.config import RunConfig


SYNTHETIC_MODES = ("none", "gan")
SYNTHETIC_FILLS = ("largest", "count")
GENERATOR_LABELS = ("uniform", "local")


@dataclass(frozen=True)
class SyntheticConfig:
    """Synthetic rows from a federated class-conditional GAN, to balance clients.

    Before the classifier's rounds, the clients train a conditional generator and
    discriminator together for ``rounds`` GAN rounds (``local_steps`` mini-batches
    each, the generator trained on every ``discriminator_steps``-th, FedAvg of both
    networks); each client then adds generated rows of its
    missing and minority classes to its training rows (never to its evaluation
    rows): up to its largest class (``fill=largest``) or to ``fill_count`` rows per
    class (``fill=count``). ``dp``: DP-SGD on the discriminator
    (per-row clipping and noise, then Adam), ε per client accounted and reported.
    """

    mode: str = setting(
        "none",
        choices=SYNTHETIC_MODES,
        key="synthetic",
        help="gan: a federated conditional GAN fills each client's minority classes",
    )
    rounds: int = setting(100, ">= 1 (GAN rounds before the classifier's)", positive)
    local_steps: int = setting(
        50, ">= 1 (mini-batches per client per GAN round)", positive
    )
    discriminator_steps: int = setting(
        1,
        ">= 1, <= synthetic-local-steps",
        positive,
        help="discriminator steps per generator step: every k-th batch trains the "
        "generator too",
    )
    batch_size: int = setting(64, ">= 1", positive)
    latent_dim: int = setting(32, ">= 1", positive)
    generator_learning_rate: float = setting(1e-3, "> 0", positive)
    discriminator_learning_rate: float = setting(4e-3, "> 0", positive)
    class_weight: float = setting(
        0.3,
        ">= 0 (0: a plain conditional GAN)",
        non_negative,
        help="weight of the discriminator's auxiliary class loss (AC-GAN)",
    )
    diversity_weight: float = setting(
        1.0,
        ">= 0 (0: off)",
        non_negative,
        help="weight of the generator's mode-seeking term, which keeps samples of "
        "one class apart",
    )
    generator_labels: str = setting(
        "uniform",
        choices=GENERATOR_LABELS,
        help="uniform: the generator trains on every class on every client; local: "
        "on the labels of the client's real batch (not with synthetic-dp)",
    )
    fill: str = setting(
        "largest",
        choices=SYNTHETIC_FILLS,
        help="largest: every class up to the client's largest; count: up to "
        "synthetic-fill-count rows per class",
    )
    fill_count: int = setting(
        100, ">= 1 (rows per class with synthetic-fill=count)", positive
    )
    dp: bool = setting(False, help="DP-SGD on the discriminator")
    dp_l2_norm_clip: float = setting(1.0, "> 0", positive)
    dp_noise_multiplier: float = setting(1.0, "> 0", positive)
    dp_delta: float = setting(1e-5, "0 < value < 1", fraction)
    tstr_rows: int = setting(
        150, ">= 1 (generated rows per class for the TSTR score)", positive
    )
    tstr_epochs: int = setting(10, ">= 1", positive)

    @property
    def target(self) -> int | str:
        """What the GAN fills each class to: "largest" or a count."""
        return "largest" if self.fill == "largest" else self.fill_count

    def validate(self, run: RunConfig) -> None:
        """Refuse what the GAN phase cannot combine with."""
        why = f"with synthetic={self.mode}"
        refusals = (
            (
                run.split is not None,
                "split",
                run.split and run.split.mode,
                f"'none' {why} (split training has its own message flow)",
            ),
            (
                run.secagg is not None,
                "secagg",
                True,
                f"false {why}: the GAN phase's updates are not masked, so SecAgg+ "
                "would not hide what each client sends",
            ),
            (
                run.client_dp is not None,
                "clientdp",
                run.client_dp and run.client_dp.mode,
                f"'none' {why}: the GAN phase's updates are not clipped and noised "
                "at client level (use synthetic-dp for DP on the GAN)",
            ),
            (
                run.dpsgd is not None and not self.dp,
                "synthetic-dp",
                self.dp,
                "true when dpsgd is on: generated rows carry what the GAN learned "
                "from the real rows, outside DP-SGD's accounting unless the "
                "discriminator is trained with DP-SGD too",
            ),
        )
        refuse_first(refusals)
        if self.discriminator_steps > self.local_steps:
            raise fail(
                "synthetic-discriminator-steps",
                self.discriminator_steps,
                f"at most synthetic-local-steps ({self.local_steps}): the generator "
                "takes a step every that many batches, so it would never train",
            )
        if self.dp and self.generator_labels == "local":
            raise fail(
                "synthetic-generator-labels",
                self.generator_labels,
                "'uniform' with synthetic-dp=true: 'local' trains the generator on "
                "the real batch's labels, which reach it outside DP-SGD's accounting",
            )
        if run.checkpoint.resume:
            raise fail(
                "resume",
                run.checkpoint.resume,
                "'' (no resume): the GAN phase before the rounds is not checkpointed, "
                "so a run with it cannot be resumed",
            )


register_section(
    "synthetic", SyntheticConfig, "synthetic", lambda flat: flat["synthetic"] != "none"
)
