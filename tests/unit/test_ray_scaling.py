"""A model's Ray Serve deployment options from `ModelScaling` (the cluster: tests/integration/test_ray_serve)."""

from __future__ import annotations

import pytest

ray_serving = pytest.importorskip("service.ray_serving", reason="Ray is a dev dependency")

pytestmark = pytest.mark.unit


def test_scaling_becomes_the_deployments_autoscaling_and_cpus() -> None:
    options = ray_serving.ModelScaling(2, 6, 4.0, 16, 2.0).deployment_options("sst2")
    assert options["name"] == "sst2"
    assert options["max_ongoing_requests"] == 16
    assert options["autoscaling_config"] == {
        "min_replicas": 2,
        "max_replicas": 6,
        "initial_replicas": 2,
        "target_ongoing_requests": 4.0,
    }
    assert options["ray_actor_options"] == {"num_cpus": 2.0}


@pytest.mark.parametrize(
    "fields",
    [
        {"min_replicas": 0},
        {"min_replicas": 3, "max_replicas": 2},
        {"target_ongoing_requests": 0},
        {"cpus_per_replica": 0},
    ],
)
def test_impossible_scaling_is_refused(fields: dict) -> None:
    with pytest.raises(ValueError, match="replicas|positive"):
        ray_serving.ModelScaling(**fields)
