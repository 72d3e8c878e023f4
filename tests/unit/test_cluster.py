"""What a Ray cluster's node must have for a run (fl_app.deploy.cluster)."""

from fl_app.deploy.cluster import NodeFacts, differences


def test_a_cluster_node_without_the_run_data_is_named():
    here = NodeFacts("a", "3.11.7", "0.1+abc", (("flwr", "1.42.0"),), "ok")
    there = NodeFacts("b", "3.11.7", "0.1+def", (("flwr", "1.41.0"),), "OSError: x")
    found = differences(here, there)
    assert len(found) == 3
    assert "fl-dnn code 0.1+def (here 0.1+abc)" in found[0]
    assert "flwr 1.41.0 (here 1.42.0)" in found[1] and "uv.lock" in found[1]
    assert found[2] == "the run's data: OSError: x"
    assert differences(here, here) == []
