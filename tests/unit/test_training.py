"""Local training steps: HeteroFL's label-masked loss."""

import numpy as np
import pytest

from fl_app.core.config import parse_run_config
from fl_app.data import ArrayDataset
from fl_app.ml.training import (
    LabelMaskedLoss,
    evaluate_model,
    get_compiled_model,
    model_key,
    train_local,
)


def test_label_masked_loss_is_cross_entropy_over_present_classes():
    loss = LabelMaskedLoss(4)
    probs = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
    assert float(loss([2], probs)[0]) == pytest.approx(-np.log(0.3), rel=1e-5)
    loss.set_classes(np.array([0, 2, 2]))
    # softmax restricted to classes {0, 2}: 0.3 / (0.1 + 0.3)
    assert float(loss([2], probs)[0]) == pytest.approx(-np.log(0.75), rel=1e-5)
    loss.set_classes(None)
    np.testing.assert_array_equal(loss.mask.numpy(), np.ones(4))


def test_label_mask_leaves_absent_class_outputs_alone_and_evaluation_full():
    cfg = parse_run_config({"model": "softmax", "client-label-mask": True})
    key = model_key(cfg, (8, 8, 1), 10)
    model = get_compiled_model(key)
    before = model.get_weights()
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1), np.float32)
    y = rng.integers(0, 3, 64)  # classes 0, 1, 2 only
    train_local(model, ArrayDataset(x, y), cfg.client, rng)
    kernel, bias = model.get_weights()
    # Absent classes get no gradient from the masked loss (Adam moves present ones).
    np.testing.assert_array_equal(kernel[:, 3:], before[0][:, 3:])
    np.testing.assert_array_equal(bias[3:], before[1][3:])
    assert not np.array_equal(kernel[:, :3], before[0][:, :3])
    # The mask is lifted after training: evaluation scores all ten classes.
    np.testing.assert_array_equal(model.loss.mask.numpy(), np.ones(10))
    loss, _ = evaluate_model(model, ArrayDataset(x, np.full(64, 9)))
    assert loss > 0 and np.isfinite(loss)
