import pytest
import transformers

from quantization.config import ActivationQuantConfig, PrecisionConfig, WeightQuantConfig
from quantization.plan import build_plan
from quantization.structure import Role, embedding_targets, encoder_blocks, linear_targets
from tests.conftest import tiny_config


def _model(layers: int, task: str = "sst2") -> transformers.PreTrainedModel:
    config = tiny_config(task, layers=layers)
    return getattr(transformers, config.architectures[0])(config)


@pytest.mark.parametrize("layers", [1, 2, 3, 5])
def test_blocks_are_discovered_from_the_model(layers: int) -> None:
    model = _model(layers)
    assert [b.name for b in encoder_blocks(model)] == [f"bert.encoder.layer.{i}" for i in range(layers)]
    targets = linear_targets(model)
    assert len(targets) == 6 * layers
    roles = [t.role for t in targets[:6]]
    assert roles == [Role.ATTENTION_QKV] * 3 + [Role.ATTENTION_OUT, Role.FFN_IN, Role.FFN_OUT]
    assert [t.head_rows for t in targets[:4]] == [12, 12, 12, None]
    assert all("pooler" not in t.name and "classifier" not in t.name for t in targets)


def test_embeddings_are_word_position_and_token_type() -> None:
    names = [t.name for t in embedding_targets(_model(2))]
    assert names == [f"bert.embeddings.{n}_embeddings" for n in ("word", "position", "token_type")]


def _precision(layer_bits: dict[str, int] | None = None, embeddings: bool = True) -> PrecisionConfig:
    return PrecisionConfig(
        name="mp",
        weights=WeightQuantConfig(bits=2),
        embeddings=WeightQuantConfig(bits=8, granularity="per_channel") if embeddings else None,
        activations=ActivationQuantConfig(),
        layer_bits=layer_bits or {},
    )


def test_plan_applies_layer_bits_and_embeddings() -> None:
    model = _model(2)
    plan = build_plan(model, _precision({"bert.encoder.layer.1.intermediate.dense": 3}))
    assert plan["bert.encoder.layer.1.intermediate.dense"].config.bits == 3
    assert plan["bert.encoder.layer.0.intermediate.dense"].config.bits == 2
    assert plan["bert.embeddings.word_embeddings"].config.bits == 8
    assert len(plan) == 12 + 3
    assert len(build_plan(model, _precision(embeddings=False))) == 12


def test_plan_refuses_unknown_module_names() -> None:
    with pytest.raises(ValueError, match=r"bert\.encoder\.layer\.7\.intermediate\.dense"):
        build_plan(_model(2), _precision({"bert.encoder.layer.7.intermediate.dense": 3}))
    with pytest.raises(ValueError, match="not quantizable layers"):
        build_plan(_model(2), _precision({"bert.pooler.dense": 3}))


def test_fp32_plan_is_empty() -> None:
    assert build_plan(_model(1), PrecisionConfig(name="fp32")) == {}
