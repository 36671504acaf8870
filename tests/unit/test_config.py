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
        # Served by default: the uniform precisions and the Hessian 2/3-bit mix (QAT, its GPTQ variant standing in
        # while it trains); the DirectQ controls are study
        assert entry.precisions == ("fp32", "w8", "w4g128", "w3g128", "w2g128", "mp23")
        assert {"direct-w4", "direct-w2", "mp23-ptq"} <= set(entry.study)
        assert catalog.plans["mp23-ptq"] == catalog.plans["mp23"] == "mp23"
    assert catalog.stand_ins == {"mp23": "mp23-ptq"}
    assert catalog.precision("mp23").qat is not None
    assert catalog.precision("mp23-ptq").qat is None
    assert catalog.precision("fp32").is_fp32
    assert catalog.precision("direct-w2").weights.granularity is Granularity.PER_TENSOR
    assert catalog.precision("w2g128").weights.num_groups == 128
    assert catalog.task("qa").articles == (36, 48)
    with pytest.raises(ValueError, match="unknown precision"):
        catalog.precision("w1")


def test_catalog_study_resolves_plans_and_task_training_recipes(tmp_path, monkeypatch) -> None:
    import json

    catalog = load_catalog()
    for name in ("w4g128-qat", "w3g128-qat", "w2g128-qat", "mp23-ptq", "mp23-reversed", "mp24", "budget"):
        assert all(name in entry.study for entry in catalog.tasks.values()), name
    assert all("mp23" in entry.precisions for entry in catalog.tasks.values())  # served, with QAT
    assert catalog.task("qa").train_articles == (0, 36)  # never the evaluation articles [36, 48)
    assert set(range(*catalog.task("qa").train_articles)).isdisjoint(range(*catalog.task("qa").articles))
    monkeypatch.setenv("QBERT_PLANS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="qbert allocate"):
        catalog.precision_for("qa", "mp23")
    (tmp_path / "qa").mkdir()
    (tmp_path / "qa" / "mp23.json").write_text(json.dumps({"layer_bits": {"bert.encoder.layer.0.output.dense": 3}}))
    resolved = catalog.precision_for("qa", "mp23")
    assert resolved.layer_bits == {"bert.encoder.layer.0.output.dense": 3}
    assert resolved.qat.max_length == 256  # the task's recipe over the precision's
    assert catalog.precision_for("sst2", "w8").qat is None
