"""FedRS and FedLC: their losses on hand-sized logits, against the papers' formulas.

FedRS (Li & Zhan, KDD 2021): the logits of classes the client has no rows of are
scaled by alpha. FedLC (Zhang et al., ICML 2022): logit c is shifted by
tau * n_c ** (-1/4); a class with no rows leaves the softmax.
"""

import math

import numpy as np
import pytest

from fl_app.core.config import parse_run_config
from fl_app.core.schema import ConfigError
from fl_app.features.fedlc.technique import FedLC, calibration_shift
from fl_app.features.fedrs.technique import FedRS, restricted_scale
from fl_app.ml.training import keras, tf

LOGITS = [[2.0, 1.0, 0.0]]  # one example, three classes
LABELS = np.array([0, 0, 0, 1])  # the client: three rows of class 0, one of 1


def cross_entropy(logits, label):
    return -logits[label] + math.log(sum(math.exp(z) for z in logits))


def loss_of(technique, labels, y=0):
    loss = technique.wrap_loss(None, num_classes=3)
    technique.set_labels(labels)
    probs = keras.activations.softmax(tf.constant(LOGITS))  # keeps its logits
    return float(loss(tf.constant([y]), probs)[0])


def test_fedrs_scales_the_absent_classes_logits_by_alpha():
    assert restricted_scale(LABELS, 3, 0.5).tolist() == [1.0, 1.0, 0.5]
    fedrs = FedRS(parse_run_config({"client-fedrs-alpha": 0.5}).fedrs)
    # class 2 is absent: its logit 0 stays 0 (scaled); classes 0 and 1 as they are
    assert loss_of(fedrs, LABELS) == pytest.approx(cross_entropy([2, 1, 0], 0))
    # only class 0 present: logits [2, 0.5 * 1, 0.5 * 0]
    expected = cross_entropy([2, 0.5, 0], 0)
    assert loss_of(fedrs, np.array([0, 0])) == pytest.approx(expected, rel=1e-6)
    assert expected < cross_entropy([2, 1, 0], 0)  # the absent class 1 pushes less
    fedrs.set_labels(None)  # after the local training: the plain cross-entropy
    probs = keras.activations.softmax(tf.constant(LOGITS))
    assert float(fedrs.loss(tf.constant([0]), probs)[0]) == pytest.approx(
        cross_entropy([2, 1, 0], 0), rel=1e-6
    )


def test_fedlc_shifts_each_logit_by_tau_times_its_count_to_the_minus_quarter():
    shift = calibration_shift(LABELS, 3, 1.0)
    assert shift[:2] == pytest.approx([3**-0.25, 1.0]) and shift[2] >= 1e9
    fedlc = FedLC(parse_run_config({"client-fedlc-tau": 1.0}).fedlc)
    # calibrated logits [2 - 3^(-1/4), 1 - 1, -inf]: class 2 leaves the softmax
    calibrated = [2 - 3**-0.25, 0.0]
    assert loss_of(fedlc, LABELS, y=0) == pytest.approx(
        cross_entropy(calibrated, 0), rel=1e-6
    )
    assert loss_of(fedlc, LABELS, y=1) == pytest.approx(
        cross_entropy(calibrated, 1), rel=1e-6
    )
    tau2 = FedLC(parse_run_config({"client-fedlc-tau": 2.0}).fedlc)
    assert loss_of(tau2, LABELS, y=1) == pytest.approx(
        cross_entropy([2 - 2 * 3**-0.25, 1 - 2.0], 1), rel=1e-6
    )


@pytest.mark.parametrize(
    ("overrides", "key", "why"),
    [
        ({"client-fedrs-alpha": 1.5}, "client-fedrs-alpha", "<= 1"),
        ({"client-fedlc-tau": -1.0}, "client-fedlc-tau", ">= 0"),
        (
            {"client-fedrs-alpha": 0.5, "client-fedlc-tau": 1.0},
            "client-fedrs-alpha",
            "pick one",
        ),
        (
            {"client-fedrs-alpha": 0.5, "client-label-mask": True},
            "client-fedrs-alpha",
            "label-mask",
        ),
        ({"client-fedlc-tau": 1.0, "dpsgd": "sgd"}, "client-fedlc-tau", "DP-SGD"),
        ({"client-fedrs-alpha": 0.5, "dpsgd": "sgd"}, "client-fedrs-alpha", "DP-SGD"),
        (
            {"client-fedrs-alpha": 0.5, "strategy": "personalized"},
            "client-fedrs-alpha",
            "personalized",
        ),
    ],
)
def test_what_cannot_combine_is_refused_naming_the_key(overrides, key, why):
    with pytest.raises(ConfigError, match=key) as err:
        parse_run_config(overrides)
    assert why in str(err.value)


def test_a_client_trains_with_the_techniques_loss_and_reports_plain_metrics():
    # a short local training through the real client code: the compiled loss is
    # FedRS's, its scale set from the client's labels during training only
    from fl_app.data import load_federated_data
    from fl_app.ml.training import (
        get_compiled_model,
        model_key,
        techniques_of,
        train_local,
    )

    cfg = parse_run_config(
        {
            "model": "softmax",
            "client-fedrs-alpha": 0.25,
            "partition": "pathological",
            "num-clients": 5,
            "clients-per-round": 5,
            "evaluate-clients-per-round": 5,
        }
    )
    data = load_federated_data(cfg)
    model = get_compiled_model(model_key(cfg, data.input_shape, data.num_classes))
    (fedrs,) = techniques_of(model)
    assert model.loss is fedrs.loss
    client = data.clients[0].train
    seen = []
    original = fedrs.loss.set
    fedrs.loss.set = lambda scale, shift: (seen.append(scale), original(scale, shift))
    metrics = train_local(model, client, cfg.client, np.random.default_rng(0))
    assert np.isfinite(metrics["train_loss"])
    present = np.unique(client.y)
    assert seen[0] is not None and seen[-1] is None  # set, then cleared
    assert sorted(np.flatnonzero(seen[0] == 1.0)) == sorted(present)
    assert set(seen[0][seen[0] != 1.0]) == {0.25}
