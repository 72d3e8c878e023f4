"""The update defences a run gets without asking: what they stop, what they spare.

The default (``DefenceConfig()``: reject a delta longer than 3 x the round's median,
cap a claim at 2 x the median claim, both widened to the round's own spread and
judged in rounds of at least 5 updates) must stop the attacks of the issue's table
and change nothing on the honest updates of each case where a median-relative bound
could hurt: few clients, a spread of data sizes, partial (personalized) updates,
width slices, DP-SGD's noise, compressed updates. Where the server cannot or must
not judge one client's update, the defaults are off and the run says why.
"""

import logging

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters

from fl_app.core.config import ConfigError, parse_run_config
from fl_app.features.robust.server import defence_of
from fl_app.features.robust.settings import DefenceConfig
from strategies.defences import DefenceStage, defend
from strategies.fedavg import FedAvg
from tests.proxies import FakeProxy, fit_res

DEFAULT = defence_of(parse_run_config({}), DefenceConfig())


def honest_deltas(rng, count, size=200, scale=0.05):
    """``count`` honest deltas: one shared direction plus each client's own noise."""
    common = rng.normal(0, scale, size)
    return [common + rng.normal(0, scale, size) for _ in range(count)]


def aggregate_with(strategy_class, results, initial, defence, **kwargs):
    """One round of ``strategy_class`` over ``results``, the defence as its stage."""
    strategy = strategy_class(
        num_clients=len(results),
        clients_per_round=len(results),
        evaluate_clients_per_round=0,
        initial_parameters=ndarrays_to_parameters(initial),
        stages=[DefenceStage(defence)] if defence is not None else [],
        **kwargs,
    )
    params, metrics = strategy.aggregate_fit(1, results, [])
    return params.tensors, metrics


def unchanged(verdicts, updates, counts):
    """Every update kept as sent, every claim as made."""
    return all(
        v.update is u and v.num_examples == n and not v.reasons
        for v, u, n in zip(verdicts, updates, counts, strict=True)
    )


def test_the_default_is_on_and_stops_the_three_attacks_of_one_client_in_ten():
    rng = np.random.default_rng(0)
    zero = [np.zeros(200)]
    deltas = honest_deltas(rng, 10)
    counts = [130 + 5 * i for i in range(10)]  # digits-sized clients
    # Prepare: client 0 scaled by 10^6, client 1 sign-flipped x5, client 2 claims 10^9
    updates = [[d] for d in deltas]
    updates[0] = [deltas[0] * 1e6]
    updates[1] = [-5 * deltas[1]]
    counts[2] = 10**9
    # Execute
    verdicts = defend(DEFAULT, [zero] * 10, updates, counts)
    # Assert: both long updates rejected, the claim capped at 2 x the median
    # claim (the ten claims' median: (155 + 160) / 2 = 157.5 -> 315)
    assert verdicts[0].update is None and verdicts[1].update is None
    assert verdicts[2].capped and verdicts[2].num_examples == 315
    assert unchanged(verdicts[3:], updates[3:], counts[3:])


def test_the_default_spares_a_round_of_few_clients():
    # three honest clients, one whose delta is 3.5x and claim 4x the others':
    # a median of three says too little to judge by (robust-min-clients 5)
    updates = [[np.array([1.0])], [np.array([1.0])], [np.array([3.5])]]
    counts = [100, 100, 400]
    verdicts = defend(DEFAULT, [[np.zeros(1)]] * 3, updates, counts)
    assert unchanged(verdicts, updates, counts)
    # five updates are judged: an outlier among five is rejected and capped (its
    # claim capped at 2 x 100 lets its delta be sqrt(2) x longer: 3 x 1.41 < 4.5)
    updates5 = [*updates[:2], *updates[:2], [np.array([4.5])]]
    verdicts = defend(DEFAULT, [[np.zeros(1)]] * 5, updates5, [*counts[:2]] * 2 + [400])
    assert verdicts[4].update is None and verdicts[4].capped


def test_the_default_spares_a_federation_whose_data_sizes_spread_widely():
    # The client sizes of dataset=synthetic (seed 42: log-normal(4, 2) + 50, from
    # 51 to 408 rows): a client with 4.5x the median data also trains 4.5x the
    # steps, and its delta is longer. Measured in a real run (softmax, 10 clients,
    # round 1): the 293-row client's delta was 0.917 against a median of ~0.29,
    # about (its share)^0.75; so here.
    sizes = [51, 54, 56, 59, 79, 102, 120, 150, 294, 408]
    median = 90.5
    rng = np.random.default_rng(1)
    updates = [
        [d * (n / median) ** 0.75] for d, n in zip(honest_deltas(rng, 10), sizes)
    ]
    verdicts = defend(DEFAULT, [[np.zeros(200)]] * 10, updates, sizes)
    assert unchanged(verdicts, updates, sizes)
    # without the widening (spread 0), the two largest would be capped at 181
    from dataclasses import replace

    plain = defend(replace(DEFAULT, spread=0.0), [[np.zeros(200)]] * 10, updates, sizes)
    assert [v.num_examples for v in plain][-2:] == [181, 181]


def test_a_lone_client_with_far_more_data_keeps_its_update_but_not_its_claim():
    # Nine clients of 60 rows and one of 270 (4.5x): its delta is 4.5^0.75 = 3.09x
    # the others' (more steps), beyond 3x the median norm. Its claim, capped at
    # 2 x 60, lets its delta be sqrt(120 / 60) = 1.41x longer: 3 x 1.41 = 4.24 >
    # 3.09, so its update is kept. Its claim is capped at 120: no rule that reads
    # only the claims can tell it from a client inflating its own (the documented
    # limit; such a federation sets robust.max_examples=0).
    rng = np.random.default_rng(8)
    deltas = honest_deltas(rng, 10, scale=0.05)
    norm = np.median([np.linalg.norm(d) for d in deltas])
    updates = [[d / np.linalg.norm(d) * norm] for d in deltas]
    updates[9] = [updates[9][0] * 4.5**0.75]
    counts = [60] * 9 + [270]
    verdicts = defend(DEFAULT, [[np.zeros(200)]] * 10, updates, counts)
    assert verdicts[9].update is updates[9]  # kept
    assert verdicts[9].capped and verdicts[9].num_examples == 120
    assert unchanged(verdicts[:9], updates[:9], counts[:9])


def test_an_inflated_claim_buys_a_longer_delta_only_up_to_the_cap():
    # digits-sized clients; the attacker flips its update x5 and claims 10^9 rows:
    # its claim is capped at 2 x the median, which lets its delta be sqrt(2) x
    # the bound (3 x 1.41 = 4.24 x the median norm): x5 is still rejected
    rng = np.random.default_rng(7)
    deltas = honest_deltas(rng, 10)
    updates = [[d] for d in deltas]
    updates[0] = [-5 * deltas[0]]
    counts = [10**9] + [130 + 5 * i for i in range(1, 10)]
    verdicts = defend(DEFAULT, [[np.zeros(200)]] * 10, updates, counts)
    assert verdicts[0].update is None and verdicts[0].capped
    assert unchanged(verdicts[1:], updates[1:], counts[1:])


def test_the_default_spares_personalized_partial_updates():
    # FedPer clients send their local layers empty: only the shared kernel counts
    from strategies.personalized import PersonalizedFedAvg

    rng = np.random.default_rng(2)
    results = [
        (
            FakeProxy(i),
            fit_res(
                [d.reshape(10, 20).astype(np.float32), np.empty(0, np.float32)],
                100 + i,
                {"partition_id": i},
            ),
        )
        for i, d in enumerate(honest_deltas(rng, 6))
    ]

    initial = [np.zeros((10, 20), np.float32), np.zeros(3, np.float32)]

    def aggregate(defence):
        return aggregate_with(
            PersonalizedFedAvg, results, initial, defence, local_mask=[False, True]
        )

    with_default, metrics = aggregate(DEFAULT)
    assert with_default == aggregate(None)[0]  # bit-equal
    assert metrics["num_accepted"] == 6 and metrics["num_rejected"] == 0


def test_the_default_judges_width_slices_by_their_root_mean_square_delta():
    # HeteroFL: six clients train a 0.1-width slice (2 parameters), four the full
    # model (200); every parameter moves about as much, so a full-width client's
    # delta norm is ~10x a narrow one's. Against the median norm (a narrow
    # client's) all four full-width clients would be rejected.
    rng = np.random.default_rng(3)
    narrow = [[rng.normal(0, 0.05, 2)] for _ in range(6)]
    full = [[d] for d in honest_deltas(rng, 4)]
    updates = narrow + full
    references = [[np.zeros(2)]] * 6 + [[np.zeros(200)]] * 4
    counts = [100] * 10
    assert unchanged(defend(DEFAULT, references, updates, counts), updates, counts)
    # a full-width client that scales its update is still rejected
    updates[9] = [full[3][0] * 20]
    assert defend(DEFAULT, references, updates, counts)[9].update is None


def test_the_default_spares_dp_sgd_noisy_updates():
    # DP-SGD: each delta is mostly Gaussian noise (sigma C / batch per step), its
    # norm set by the client's steps; sizes from 80 to 200 rows, batch 32
    rng = np.random.default_rng(4)
    sizes = [80, 96, 112, 128, 144, 160, 176, 192, 200, 88]
    updates = [[rng.normal(0.001, 0.02 * np.sqrt(np.ceil(n / 32)), 500)] for n in sizes]
    verdicts = defend(DEFAULT, [[np.zeros(500)]] * 10, updates, sizes)
    assert unchanged(verdicts, updates, sizes)


def test_the_default_spares_compressed_updates():
    # sign (EF-SignSGD: scale x sign of each client's delta plus its residual) and
    # top-k 5 % int8, both with error feedback, as conf/compression's presets;
    # round 2's uploads (residuals carried), decoded as the server decodes them
    from fl_app.features.compression.codecs import ClientCodecs

    rng = np.random.default_rng(5)
    zero = [np.zeros((20, 20), np.float32)]
    for upload, topk in (("sign", 1.0), ("sparse+int8", 0.05)):
        codecs = ClientCodecs.from_specs(upload, "none", True, True, topk)
        updates = []
        for round1, round2 in zip(
            honest_deltas(rng, 10, 400), honest_deltas(rng, 10, 400), strict=True
        ):
            _, residual = codecs.encode_upload([round1.reshape(20, 20)], zero)
            payload, _ = codecs.encode_upload([round2.reshape(20, 20)], zero, residual)
            updates.append(codecs.upload.decode(payload, [(20, 20)]))
        counts = [120] * 10
        verdicts = defend(DEFAULT, [zero] * 10, updates, counts)
        assert unchanged(verdicts, updates, counts), upload


def test_the_default_gives_fedavg_the_same_aggregate_on_honest_clients():
    rng = np.random.default_rng(6)
    results = [
        (
            FakeProxy(i),
            fit_res([d.astype(np.float32)], 120 + 7 * i, {"partition_id": i}),
        )
        for i, d in enumerate(honest_deltas(rng, 10))
    ]

    def aggregate(defence):
        return aggregate_with(FedAvg, results, [np.zeros(200, np.float32)], defence)[0]

    assert aggregate(DEFAULT) == aggregate(None)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"secagg": True}, "SecAgg+ gives the server only the sum"),
        ({"split": "splitfed_v1", "model": "mlp"}, "split training"),
        ({"clientdp": "server-fixed"}, "client-level DP clips every update"),
    ],
    ids=["secagg", "split", "client-level-dp"],
)
def test_the_default_is_off_where_the_server_cannot_judge_one_update_and_says_so(
    config, reason, caplog
):
    cfg = parse_run_config(config)  # no error: the user did not ask for them
    defence = cfg.extra("defence")
    assert reason in defence.off_reason(cfg)
    with caplog.at_level(logging.INFO, logger="fl_app.features.robust.server"):
        assert defence_of(cfg, defence) is None
    assert f"update defences off: {reason}" in caplog.text


def test_an_explicit_defence_is_refused_with_secagg_and_can_be_turned_off():
    with pytest.raises(ConfigError, match="'robust-norm-bound'.*SecAgg"):
        parse_run_config({"secagg": True, "robust-norm-bound": 4.0})
    off = parse_run_config({"robust-norm-bound": 0.0, "robust-max-examples": 0.0})
    assert off.extra("defence") is None
    # an explicit defence with client-level DP is the user's choice, as before
    cfg = parse_run_config({"clientdp": "server-fixed", "robust-norm-bound": 4.0})
    assert cfg.extra("defence").off_reason(cfg) is None


def test_a_run_of_few_clients_is_told_the_median_bounds_never_apply(caplog):
    cfg = parse_run_config(
        {"num-clients": 3, "clients-per-round": 3, "evaluate-clients-per-round": 3}
    )
    with caplog.at_level(logging.INFO, logger="fl_app.features.robust.server"):
        assert defence_of(cfg, cfg.extra("defence")) is not None
    assert "clients-per-round=3 they never apply" in caplog.text
