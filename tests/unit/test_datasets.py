import numpy as np
import pytest

from fl_app.core.config import DatasetConfig
from fl_app.data import DatasetUnavailableError
from fl_app.data.datasets import generate_synthetic, load_digits, load_hub


def synth(**kw):
    base = dict(
        name="synthetic",
        test_fraction=0.2,
        val_fraction=0.1,
        alpha=1.0,
        beta=1.0,
        iid=False,
        samples_per_client=100,
        dim=60,
        num_classes=10,
    )
    return DatasetConfig(**{**base, **kw})


def test_load_digits_shape_and_range():
    data = load_digits()
    assert data.x.shape == (1797, 8, 8, 1) and data.x.dtype == np.float32
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0
    assert set(np.unique(data.y)) == set(range(10))


def test_synthetic_deterministic_and_shaped():
    a = generate_synthetic(synth(), 3, seed=5)
    b = generate_synthetic(synth(), 3, seed=5)
    assert all(
        np.array_equal(x.x, y.x) and np.array_equal(x.y, y.y) for x, y in zip(a, b)
    )
    assert all(d.x.shape == (100, 60) for d in a)


def test_synthetic_lognormal_sizes_when_zero():
    sizes = [
        len(d) for d in generate_synthetic(synth(samples_per_client=0), 20, seed=1)
    ]
    assert min(sizes) >= 50 and len(set(sizes)) > 1


def mean_pairwise_tv(clients):
    hists = [np.bincount(c.y, minlength=10) / len(c) for c in clients]
    pairs = [(i, j) for i in range(len(hists)) for j in range(i + 1, len(hists))]
    return np.mean([0.5 * np.abs(hists[i] - hists[j]).sum() for i, j in pairs])


def test_synthetic_iid_shares_labels_non_iid_skews_them():
    # Under IID every client labels with one shared W, b and feature mean, so label
    # histograms agree; with alpha = beta = 1 each client has its own model.
    iid = generate_synthetic(synth(iid=True, samples_per_client=1000), 8, seed=0)
    non_iid = generate_synthetic(synth(samples_per_client=1000), 8, seed=0)
    assert mean_pairwise_tv(iid) < 0.1
    assert mean_pairwise_tv(non_iid) > 0.3


def test_hub_dataset_offline_is_clear(monkeypatch, tmp_path):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-fl-dnn-test")
    # The hub libraries read these once, at import; an earlier test in this process
    # may have imported them online (then each request waits out its retries).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    with pytest.raises(DatasetUnavailableError, match="mnist.*Hugging Face hub"):
        load_hub("mnist_hub")
