import pytest

from quantization.catalog import load_catalog
from quantization.config import ActivationQuantConfig, Granularity, PrecisionConfig, WeightQuantConfig


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 5}, "bits must be one of"),
        ({"bits": 4, "num_groups": 0}, "num_groups must be >= 1"),
        ({"bits": 4, "granularity": "per_block"}, "per_block"),
        ({"bits": 2, "symmetric": True}, "at least 3 bits"),
        ({"bits": 4, "range_method": "percentile"}, "percentile"),
    ],
)
def test_invalid_weight_configs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WeightQuantConfig(**kwargs)


def test_config_dict_round_trip() -> None:
    config = WeightQuantConfig(bits=3, granularity=Granularity.PER_CHANNEL, symmetric=True, range_method="mse")
    assert WeightQuantConfig.from_dict(config.to_dict()) == config


def test_precision_validation() -> None:
    with pytest.raises(ValueError, match="precision name"):
        PrecisionConfig(name="W4 G128")
    with pytest.raises(ValueError, match="8-bit activations"):
        PrecisionConfig(name="w4", weights=WeightQuantConfig(bits=4))
    with pytest.raises(ValueError, match="layer_bits"):
        PrecisionConfig(
            name="w4", weights=WeightQuantConfig(bits=4), activations=ActivationQuantConfig(), layer_bits={"x": 6}
        )
    with pytest.raises(ValueError, match="only 8-bit"):
        ActivationQuantConfig(bits=4)


def test_catalog_defines_every_precision_the_tasks_name() -> None:
    catalog = load_catalog()
    assert set(catalog.tasks) == {"sst2", "ner", "qa"}
    for entry in catalog.tasks.values():
        assert {"fp32", "w8", "w4g128", "w3g128", "w2g128", "direct-w4", "direct-w2"} <= set(entry.precisions)
    assert catalog.precision("fp32").is_fp32
    assert catalog.precision("direct-w2").weights.granularity is Granularity.PER_TENSOR
    assert catalog.precision("w2g128").weights.num_groups == 128
    assert catalog.task("qa").articles == (36, 48)
    with pytest.raises(ValueError, match="unknown precision"):
        catalog.precision("w1")
