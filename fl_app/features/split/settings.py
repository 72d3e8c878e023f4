"""Settings of split training (``split``, ``split-*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fl_app.core.config import MODEL_LAYERS, positive, refuse_first, strategy_spec
from fl_app.core.schema import ConfigError, fail, register_section, setting

if TYPE_CHECKING:
    from fl_app.core.config import RunConfig


SPLIT_MODES = ("none", "splitfed_v1", "splitfed_v2", "local_loss")


@dataclass(frozen=True)
class SplitConfig:
    """Split training: clients run the model up to ``cut_layer``, the server the rest.

    ``splitfed_v1``: clients in parallel, one server-side copy per client, averaged
    after the round (Thapa et al., 2022); ``splitfed_v2``: one server-side model,
    the clients' batches in turn; ``local_loss``: clients train their part with an
    auxiliary head and send cut activations once per round (Han et al., 2021).
    ``chunk`` mini-batches travel per message.
    """

    mode: str = setting("none", choices=SPLIT_MODES, key="split")
    cut_layer: str = setting("auto")
    chunk: int = setting(8, ">= 1 (mini-batches per message; splitfed modes)", positive)

    def validate(self, run: RunConfig) -> None:
        """Check the cut against the model; refuse what cannot combine with it."""
        model, names = run.model.name, MODEL_LAYERS[run.model.name]
        if len(names) < 2:
            raise fail(
                "model",
                model,
                f"a model with a hidden layer (cnn, mlp) with split={self.mode}: "
                f"'{model}' has only {', '.join(names)}, nothing to cut",
            )
        if self.cut_layer != "auto" and self.cut_layer not in names[:-1]:
            raise fail(
                "split-cut-layer",
                self.cut_layer,
                f"'auto' or a layer of model '{model}' other than its last: "
                f"{', '.join(names[:-1])} (cutting after {names[-1]} would leave "
                "the server part empty)",
            )
        spec = strategy_spec(run)
        why = f"with split={self.mode}"
        refusals = (
            (
                spec.personal_state,
                "strategy",
                run.strategy,
                "a strategy without "
                f"personal models {why} (the server holds part of every model)",
            ),
            (
                spec.width_slicing,
                "strategy",
                run.strategy,
                f"a strategy without width slicing {why}",
            ),
            (
                run.secagg is not None,
                "secagg",
                True,
                f"false {why}: SecAgg+ sums "
                "model updates, it cannot hide cut activations from the server",
            ),
            (
                run.compression.active,
                "compression",
                run.compression.upload,
                f"'none' (and no delta or download codec) {why}",
            ),
            (
                run.pruning is not None,
                "pruning",
                run.pruning and run.pruning.schedule,
                f"'none' {why}",
            ),
            (
                run.dpsgd is not None,
                "dpsgd",
                run.dpsgd and run.dpsgd.optimizer,
                f"'none' {why} (the server trains on raw cut activations)",
            ),
            (
                run.client_dp is not None,
                "clientdp",
                run.client_dp and run.client_dp.mode,
                f"'none' {why}",
            ),
            (
                run.augmentation is not None,
                "client-augmentation",
                run.augmentation and run.augmentation.name,
                f"'none' {why} (the backward step "
                "recomputes the forward pass from the stored batch indices)",
            ),
            (run.client.label_mask, "client-label-mask", True, f"false {why}"),
        )
        refuse_first(refusals)
        if run.checkpoint.resume:
            raise fail(
                "resume",
                run.checkpoint.resume,
                "'' (no resume): split training has its own message flow, "
                "so a run with it cannot be resumed",
            )
        from fl_app.core.techniques import active_techniques

        techniques = active_techniques(run.extras)
        if techniques:
            names = ", ".join(name for name, _ in techniques)
            raise ConfigError(
                f"run config: split={self.mode} runs no client techniques; turn "
                f"off {names}"
            )


register_section("split", SplitConfig, "split", lambda flat: flat["split"] != "none")
