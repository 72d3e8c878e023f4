"""tfmot pruning on clients under the server's mask."""

from dataclasses import replace

import numpy as np
import pytest

from fl_app.client.keras_client import KerasClient
from fl_app.core.config import ConfigError, parse_run_config
from fl_app.features.compression.server import codec_transport
from fl_app.features.pruning.pruning import (
    mask_agreement,
    prunable_arrays,
    sparsity_by_round,
)
from fl_app.features.pruning.server import server_pruner
from fl_app.ml.training import get_compiled_model

PRUNED = {
    "pruning": "polynomial",
    "pruning-final-sparsity": 0.9,
    "pruning-begin-round": 1,
    "pruning-end-round": 5,
    "pruning-layers": "all",
    "compression": "sparse+int8",
    "compression-download": "sparse",
    "compression-delta": True,
    "compression-error-feedback": True,
}


def build_transport(cfg, model):
    """The strategy's codecs and pruning mask, as the two features give them."""
    return (
        codec_transport(cfg, model).get("transport"),
        server_pruner(cfg, model).get("pruner"),
    )


def test_schedule_follows_tfmot_polynomial_decay_in_rounds():
    cfg = parse_run_config(PRUNED)
    schedule = sparsity_by_round(cfg.pruning, 8)
    # s(r) = 0.9 + (0 - 0.9) * (1 - (r - 1) / 4) ** 3, pruned on rounds 1..5 only
    expected = {r: 0.9 - 0.9 * (1 - (r - 1) / 4) ** 3 for r in range(1, 6)}
    assert schedule.keys() == expected.keys()
    for r, s in expected.items():
        assert schedule[r] == pytest.approx(s, abs=1e-6)
    constant = replace(cfg.pruning, schedule="constant", begin_round=3)
    assert sparsity_by_round(constant, 5) == {3: 0.9, 4: 0.9, 5: 0.9}


def test_client_trains_under_the_server_mask_and_uploads_inside_it():
    cfg = parse_run_config(PRUNED)
    client = KerasClient(cfg, 0)
    plain = get_compiled_model(replace(client.key, techniques=()), cfg.seed)
    transport, pruner = build_transport(cfg, plain)
    assert pruner.prunable == prunable_arrays(plain) == [True, False] * 4
    # the server prunes the initial model to the final sparsity, sends it sparse
    global_weights = pruner.apply(plain.get_weights(), 5)
    assert pruner.sparsity(global_weights) == pytest.approx(0.9, abs=1e-3)
    payload, received = transport.send(global_weights)
    upload, n, _ = client.fit(payload, {"server_round": 1})
    # the client's tfmot wrappers hold exactly the server's mask
    wrapped = get_compiled_model(client.key)
    assert mask_agreement(wrapped, received, pruner.prunable)
    model = transport.receive(upload, received)
    for new, old, prunable in zip(model, received, pruner.prunable, strict=True):
        if prunable:
            assert np.all(new[old == 0] == 0)  # nothing outside the mask
            assert not np.array_equal(new, old)  # but it trained
    # the upload is the sparse int8 delta: > 20x smaller than dense float32
    dense = sum(w.nbytes for w in received)
    assert dense / sum(a.nbytes for a in upload) > 20
    assert n == len(client.data.train)


def test_auto_layers_skip_the_first_and_the_class_layer():
    cfg = parse_run_config({**PRUNED, "pruning-layers": "auto"})
    plain = get_compiled_model(
        replace(KerasClient(cfg, 0).key, techniques=()), cfg.seed
    )
    _, pruner = build_transport(cfg, plain)
    # arrays: conv1 kernel, bias, conv2 kernel, bias, fc1 ..., classifier ...
    assert pruner.prunable == [False, False, True, False, True, False, False, False]
    cfg = parse_run_config({**PRUNED, "pruning-layers": "fc1"})
    _, pruner = build_transport(cfg, plain)
    assert pruner.prunable == [False, False, False, False, True, False, False, False]
    with pytest.raises(ConfigError, match="pruning-layers"):
        parse_run_config({**PRUNED, "pruning-layers": "conv9"})
    with pytest.raises(ConfigError, match="leaves nothing to prune"):
        parse_run_config({**PRUNED, "model": "softmax", "pruning-layers": "auto"})


def test_pruning_and_compression_refuse_other_strategies_and_bad_schedules():
    with pytest.raises(
        ConfigError, match="fedavg, median.* when pruning or compression"
    ):
        parse_run_config({**PRUNED, "strategy": "hetero"})
    with pytest.raises(ConfigError, match="pruning-end-round"):
        parse_run_config({**PRUNED, "pruning-end-round": 1})
    with pytest.raises(ConfigError, match="compression-error-feedback"):
        parse_run_config({**PRUNED, "compression-delta": False})
    with pytest.raises(ConfigError, match="compression"):
        parse_run_config({"compression": "gzip"})
