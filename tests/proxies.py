"""What Flower hands a strategy, for tests: client proxies and fit results."""

from dataclasses import dataclass

from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

OK = Status(code=Code.OK, message="")


@dataclass
class FakeProxy:
    """A ClientProxy as the strategies use it: they read only its node id."""

    node_id: int


def fit_res(weights, num_examples, metrics=None):
    """A successful ``FitRes`` carrying ``weights`` (a list of arrays)."""
    return FitRes(
        OK, ndarrays_to_parameters(weights), num_examples, dict(metrics or {})
    )
