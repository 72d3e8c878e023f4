import pytest


@pytest.fixture(autouse=True)
def fresh_model_cache():
    """Every test starts and ends with an empty per-process model cache.

    The cache is what a Ray worker keeps between the clients it serves; a test must
    not see a model another test built (or trained). Imported lazily: tests that do
    not touch TensorFlow do not pay for its import.
    """
    import sys

    training = sys.modules.get("fl_app.ml.training")
    if training is not None:
        training.clear_model_cache()
    yield
    training = sys.modules.get("fl_app.ml.training")
    if training is not None:
        training.clear_model_cache()
