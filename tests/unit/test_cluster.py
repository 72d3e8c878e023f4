"""What a Ray cluster's node must have for a run (fl_app.deploy.cluster)."""

import pytest

from fl_app.deploy.cluster import NodeFacts, differences
from fl_app.deploy.launcher import federation_config


def test_a_cluster_node_without_the_run_data_is_named():
    here = NodeFacts("a", "3.11.7", "0.1+abc", (("flwr", "1.42.0"),), "ok")
    there = NodeFacts("b", "3.11.7", "0.1+def", (("flwr", "1.41.0"),), "OSError: x")
    found = differences(here, there)
    assert len(found) == 3
    assert "fl-dnn code 0.1+def (here 0.1+abc)" in found[0]
    assert "flwr 1.41.0 (here 1.42.0)" in found[1] and "uv.lock" in found[1]
    assert found[2] == "the run's data: OSError: x"
    assert differences(here, here) == []


def test_the_federation_config_carries_client_gpus_and_refuses_what_flower_would():
    assert federation_config(10) == "num-supernodes=10 client-resources-num-cpus=1"
    assert federation_config(4, 2, 0.25) == (
        "num-supernodes=4 client-resources-num-cpus=2 client-resources-num-gpus=0.25"
    )
    assert federation_config(4, backend_num_cpus=2).endswith("init-args-num-cpus=2")
    with pytest.raises(ValueError, match="whole number"):
        federation_config(4, 0.5)
    with pytest.raises(ValueError, match="client_num_gpus"):
        federation_config(4, 1, -1)
    with pytest.raises(ValueError, match="has its own resources"):
        federation_config(4, backend_num_cpus=2, ray_address="auto")
