"""Update defences, robust rules and attacks, by hand on small arrays."""

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

from fl_app.core.config import ConfigError, parse_run_config
from strategies.attacks import Attack, AttackStage, alie_z
from strategies.defences import Defence, DefenceStage, defend, delta_norm
from strategies.fedavg import FedAvg
from strategies.robust import robust_aggregate
from tests.proxies import FakeProxy, fit_res


def model(*values):
    """A two-array model: a kernel [[a, b]] and a bias [c] (float32)."""
    a, b, c = values
    return [np.array([[a, b]], np.float32), np.array([c], np.float32)]


ZERO = model(0, 0, 0)


def test_delta_norm_skips_the_empty_arrays_of_a_partial_update():
    assert delta_norm(ZERO, model(3, 4, 0)) == 5.0
    local = [np.array([[3, 4]], np.float32), np.zeros(0, np.float32)]
    assert delta_norm(ZERO, local) == 5.0


def test_a_norm_bound_relative_to_the_median_clips_the_outlier():
    updates = [model(1, 0, 0), model(2, 0, 0), model(3, 0, 0), model(0, 100, 0)]
    verdicts = defend(Defence(norm_bound=2.0), [ZERO] * 4, updates, [1, 1, 1, 1])
    # median norm (2 + 3) / 2 = 2.5, bound 5: only the norm-100 update is clipped
    assert [v.clipped for v in verdicts] == [False, False, False, True]
    np.testing.assert_allclose(verdicts[3].update[0], [[0, 5]])
    assert "norm 100 clipped to the bound 5" in verdicts[3].reasons[0]
    assert verdicts[0].update is updates[0]  # the others untouched


def test_a_fixed_norm_bound_rejects():
    updates = [model(1, 0, 0), model(3, 0, 0)]
    defence = Defence(norm_bound=2.5, norm_mode="fixed", norm_action="reject")
    verdicts = defend(defence, [ZERO] * 2, updates, [1, 1])
    assert verdicts[0].update is updates[0] and verdicts[1].update is None
    assert "exceeds the bound 2.5" in verdicts[1].reasons[0]


def test_the_example_cap_and_equal_weights():
    counts = [10, 20, 30, 10**9]
    verdicts = defend(Defence(max_examples=2.0), [ZERO] * 4, [ZERO] * 4, counts)
    # median claim (20 + 30) / 2 = 25, cap 50
    assert [v.num_examples for v in verdicts] == [10, 20, 30, 50]
    assert [v.capped for v in verdicts] == [False, False, False, True]
    fixed = Defence(max_examples=15, examples_mode="fixed")
    assert [v.num_examples for v in defend(fixed, [ZERO] * 4, [ZERO] * 4, counts)] == [
        10,
        15,
        15,
        15,
    ]
    equal = defend(Defence(equal_weights=True), [ZERO] * 2, [ZERO] * 2, [5, 7])
    assert [v.num_examples for v in equal] == [1, 1]


def one(values):
    return [(model(v, 0, 0), 1) for v in values]


def kernel(weights):
    return float(weights[0][0, 0])


def test_robust_rules_by_hand():
    assert kernel(robust_aggregate("median", one([1, 2, 100]))) == 2
    # trimmed mean, beta 0.25 of four: 1 and 100 cut, (2 + 3) / 2
    assert kernel(robust_aggregate("trimmed_mean", one([1, 2, 3, 100]), 0, 0.25)) == 2.5
    # Krum, f = 1 of five: each scores its n - f - 2 = 2 nearest squared distances;
    # 1 and 2 score 1 + 1 = 2, the lowest; Krum returns the first, Multi-Krum (m=2)
    # averages both
    points = one([0, 1, 2, 3, 100])
    assert kernel(robust_aggregate("krum", points, 1)) == 1
    assert kernel(robust_aggregate("multikrum", points, 1, to_keep=2)) == 1.5
    # Bulyan, f = 1 of seven: repeated Krum selects 2, 3, 1, 4, 0 (never 5 or 100);
    # the mean of the 3 values nearest their median (2) is 2
    assert kernel(robust_aggregate("bulyan", one([0, 1, 2, 3, 4, 5, 100]), 1)) == 2
    assert robust_aggregate("median", one([1, 2, 100]))[0].dtype == np.float32


def test_a_rule_with_too_few_updates_says_so():
    with pytest.raises(ValueError, match="bulyan with f=1 needs n >= 4f \\+ 3; 6"):
        robust_aggregate("bulyan", one(range(6)), 1)


def test_attacks_by_hand():
    ref = [model(1, 1, 1)] * 3
    honest = [model(2, 1, 1), model(3, 1, 1), model(4, 1, 1)]
    pids = [0, 1, 2]

    def sent(kind, **kw):
        return Attack(kind, frozenset({0, 1}), **kw).apply(
            1, pids, ref, honest, [5, 6, 7]
        )

    updates, counts, hit = sent("scaled", scale=10)
    assert hit == [0, 1] and [kernel(u) for u in updates] == [11, 21, 4]
    updates, _, _ = sent("sign_flip", scale=5)
    assert [kernel(u) for u in updates] == [-4, -9, 4]
    _, counts, _ = sent("examples", num_examples=10**9)
    assert counts == [10**9, 10**9, 7]
    # alie: the attackers' deltas 1 and 2 have mean 1.5 and std 0.5; z = 2 sends
    # 1 + 1.5 - 2 * 0.5 = 1.5 from both
    updates, _, _ = sent("alie", z=2.0)
    assert [kernel(u) for u in updates] == [1.5, 1.5, 4]
    updates, _, _ = sent("label_flip")  # acts on the data, not here
    assert updates == honest
    # Baruch et al.: n = 10, m = 2: s = 6 - 2 = 4, z = Phi^-1(0.6)
    assert alie_z(10, 2) == pytest.approx(0.2533, abs=1e-4)


def test_fedavg_puts_the_attack_in_then_clips_it_and_records_both():
    strategy = FedAvg(
        num_clients=3,
        clients_per_round=3,
        evaluate_clients_per_round=0,
        initial_parameters=ndarrays_to_parameters(ZERO),
        stages=[
            AttackStage(Attack("scaled", frozenset({0}), scale=1e6)),
            DefenceStage(Defence(norm_bound=2.0)),
        ],
    )
    results = [
        (
            FakeProxy(10 + pid),
            fit_res(model(1, 0, 0), 4, {"partition_id": pid}),
        )
        for pid in range(3)
    ]
    params, _ = strategy.aggregate_fit(1, results, [])
    # client 0 sent 1e6, clipped to 2 x the median norm (1): (2 + 1 + 1) / 3
    assert kernel(parameters_to_ndarrays(params)) == pytest.approx(4 / 3)
    record = strategy.pop_round_record(1)
    assert record["attackers"] == [0] and record["num_clipped"] == 1
    attacked = record["clients"][0]
    assert attacked["attacked"] == "scaled" and "clipped" in attacked["defended"]


def test_robust_settings_are_refused_where_they_cannot_hold():
    with pytest.raises(ConfigError, match="'strategy-num-malicious'.*f <= 1"):
        parse_run_config({"strategy": "bulyan", "strategy-num-malicious": 2})
    with pytest.raises(ConfigError, match="'secagg'.*median does not declare"):
        parse_run_config({"strategy": "median", "secagg": True})
    with pytest.raises(ConfigError, match="'clientdp'.*krum"):
        parse_run_config({"strategy": "krum", "clientdp": "server-fixed"})
    with pytest.raises(ConfigError, match="'attack-clients'.*0..9"):
        parse_run_config({"attack": "scaled", "attack-clients": "12"})
    with pytest.raises(ConfigError, match="'robust-norm-bound'.*>= 1"):
        parse_run_config({"robust-norm-bound": 0.5})
    cfg = parse_run_config({"attack": "alie", "attack-fraction": 0.2, "seed": 3})
    assert len(cfg.extra("attack").attackers(cfg)) == 2  # a seeded draw of 2 of 10


def test_an_attack_is_refused_outside_simulation():
    from fl_app.features.robust.server import (
        is_simulation,
        refuse_attacks_outside_simulation,
    )

    class Run:
        cfg = parse_run_config({"attack": "scaled"})
        grid = object()  # a deployment's grid

    assert not is_simulation(Run.grid)
    with pytest.raises(ConfigError, match="'attack'.*deployment"):
        refuse_attacks_outside_simulation(Run)


def test_a_label_flipping_attacker_trains_on_flipped_labels_only():
    from fl_app.client.keras_client import KerasClient

    base = {"num-clients": 3, "clients-per-round": 3, "evaluate-clients-per-round": 3}
    flip = {**base, "attack": "label_flip", "attack-clients": "1"}
    honest = KerasClient(parse_run_config(base), 1)
    attacker = KerasClient(parse_run_config(flip), 1)
    np.testing.assert_array_equal(attacker.data.train.y, 9 - honest.data.train.y)
    np.testing.assert_array_equal(attacker.data.val.y, honest.data.val.y)
    other = KerasClient(parse_run_config(flip), 0)  # not an attacker
    np.testing.assert_array_equal(
        other.data.train.y, KerasClient(parse_run_config(base), 0).data.train.y
    )


def test_the_configs_tables_agree_with_the_strategies():
    # fl_app.features.robust.settings keeps the rule names, their client-count
    # conditions and the
    # attack names for the config (ClientApps never import strategies/)
    from fl_app.features.robust import settings
    from strategies import attacks
    from strategies.robust import RULES

    assert set(settings.RULE_MIN_CLIENTS) == set(RULES)
    for name, (min_clients, needs) in settings.RULE_MIN_CLIENTS.items():
        assert needs == RULES[name].needs
        assert [min_clients(f) for f in range(5)] == [
            RULES[name].min_clients(f) for f in range(5)
        ]
    assert settings.ATTACKS == attacks.ATTACKS
