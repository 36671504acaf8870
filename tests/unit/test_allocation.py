"""Bit allocation: Q-BERT's rule, the exact budget solver on hand-computable cases, and strict plans."""

from __future__ import annotations

import itertools

import pytest
import transformers

from quantization.allocation import (
    LayerOption,
    allocate_under_budget,
    block_bits_to_layer_bits,
    layer_options,
    plan_size,
    qbert_block_bits,
    second_order_cost,
)
from quantization.config import WeightQuantConfig
from quantization.hessian import BlockSensitivity
from quantization.plan import check_full_plan
from quantization.structure import linear_targets
from tests.conftest import tiny_config


def _block(name: str, eigenvalues: tuple[float, ...]) -> BlockSensitivity:
    return BlockSensitivity(block=name, eigenvalues=eigenvalues, traces=())


SENSITIVITIES = [
    _block("b0", (1.0, 1.0)),  # Ω = 1
    _block("b1", (-9.0, -11.0)),  # Ω = 10 + 1 = 11: negative eigenvalues count by magnitude
    _block("b2", (2.0, 6.0)),  # Ω = 4 + 2 = 6
    _block("b3", (0.5, 0.5)),  # Ω = 0.5
]


def test_qbert_rule_gives_the_more_sensitive_half_the_higher_width() -> None:
    assert qbert_block_bits(SENSITIVITIES, 2, 3) == {"b0": 2, "b1": 3, "b2": 3, "b3": 2}
    assert qbert_block_bits(SENSITIVITIES, 2, 3, reverse=True) == {"b0": 3, "b1": 2, "b2": 2, "b3": 3}
    odd = qbert_block_bits(SENSITIVITIES[:3], 2, 4)
    assert sorted(odd.values()) == [2, 2, 4]  # the smaller half gets the higher width
    with pytest.raises(ValueError, match="below"):
        qbert_block_bits(SENSITIVITIES, 3, 2)


def _brute_force(options: dict[str, list[LayerOption]], budget: int) -> float:
    best = float("inf")
    for combo in itertools.product(*options.values()):
        if sum(o.size_bytes for o in combo) <= budget:
            best = min(best, sum(o.cost for o in combo))
    return best


def test_budget_allocation_hand_computed() -> None:
    # Two layers; bits 2/4 cost 10/1 (a, sensitive) and 3/2.5 (b, insensitive); sizes 2/4 units of 100 bytes.
    options = {
        "a": [LayerOption(2, 200, 10.0), LayerOption(4, 400, 1.0)],
        "b": [LayerOption(2, 200, 3.0), LayerOption(4, 400, 2.5)],
    }
    # 600 bytes: only one layer can have 4 bits; giving it to `a` costs 1 + 3 = 4 (to `b`: 10 + 2.5).
    result = allocate_under_budget(options, 600)
    assert result.layer_bits == {"a": 4, "b": 2}
    assert result.size_bytes == 600
    assert result.cost == pytest.approx(4.0)
    assert allocate_under_budget(options, 800).layer_bits == {"a": 4, "b": 4}
    assert allocate_under_budget(options, 599).layer_bits == {"a": 2, "b": 2}
    with pytest.raises(ValueError, match="no allocation fits"):
        allocate_under_budget(options, 399)


def test_budget_allocation_matches_brute_force_on_random_cases() -> None:
    import random

    rng = random.Random(0)
    for _ in range(30):
        options = {}
        for layer in range(5):
            sizes = sorted(rng.sample(range(3, 40), 3))
            costs = sorted((rng.random() * 10 for _ in range(3)), reverse=True)
            options[f"l{layer}"] = [LayerOption(b, s * 64, c) for b, s, c in zip((2, 3, 4), sizes, costs, strict=True)]
        smallest = sum(o[0].size_bytes for o in options.values())
        budget = rng.randint(smallest, smallest * 3)
        result = allocate_under_budget(options, budget)
        assert result.size_bytes <= budget
        assert result.cost == pytest.approx(_brute_force(options, budget))
        assert plan_size(options, result.layer_bits) == (result.size_bytes, pytest.approx(result.cost))


def test_second_order_cost_is_mean_trace_times_squared_error() -> None:
    assert second_order_cost(trace=20.0, parameters=10, squared_error=3.0) == pytest.approx(6.0)
    assert second_order_cost(trace=-5.0, parameters=10, squared_error=3.0) == 0.0


def _model(layers: int = 3, hidden: int = 48) -> transformers.PreTrainedModel:
    config = tiny_config("sst2", layers=layers, hidden=hidden)
    return getattr(transformers, config.architectures[0])(config)


def test_block_bits_become_layer_bits_for_every_linear_of_the_block() -> None:
    model = _model()
    blocks = {f"bert.encoder.layer.{i}": 2 + (i % 2) for i in range(3)}
    layer_bits = block_bits_to_layer_bits(model, blocks)
    assert len(layer_bits) == 18
    assert layer_bits["bert.encoder.layer.1.attention.self.query"] == 3
    assert layer_bits["bert.encoder.layer.2.output.dense"] == 2
    check_full_plan(model, layer_bits)
    with pytest.raises(ValueError, match="blocks are"):
        block_bits_to_layer_bits(model, {"bert.encoder.layer.0": 2})


def test_a_plan_must_cover_exactly_the_models_linears() -> None:
    model = _model()
    layer_bits = {t.name: 2 for t in linear_targets(model)}
    check_full_plan(model, layer_bits)
    missing = dict(layer_bits)
    missing.pop("bert.encoder.layer.0.attention.self.key")
    with pytest.raises(ValueError, match="leaves out 1"):
        check_full_plan(model, missing)
    with pytest.raises(ValueError, match="not quantizable"):
        check_full_plan(model, {**layer_bits, "bert.encoder.layer.0.attention.self.keys": 2})


def test_layer_options_cost_falls_with_bits_and_size_grows() -> None:
    model = _model(layers=1)
    traces = {t.name: 4.0 for t in linear_targets(model)}
    options = layer_options(model, WeightQuantConfig(bits=2, num_groups=8, range_method="mse"), (2, 3, 4, 8), traces)
    for choices in options.values():
        assert [o.size_bytes for o in choices] == sorted(o.size_bytes for o in choices)
        assert [o.cost for o in choices] == sorted((o.cost for o in choices), reverse=True)
    with pytest.raises(ValueError, match="no Hessian trace"):
        layer_options(model, WeightQuantConfig(bits=2), (2,), {})


def test_ptq161_layers_are_an_allocation_option() -> None:
    """With a binarization config the allocator offers 1 bit (PTQ1.61) beside 2/3/4, sized as stored: at a width of
    256 its float factors (a few per row and column) no longer outweigh the bit it saves over 2-bit codes."""
    from quantization.config import BinarizationConfig

    model = _model(layers=1, hidden=256)
    traces = {t.name: 4.0 for t in linear_targets(model)}
    config = WeightQuantConfig(bits=1, num_groups=8, binarization=BinarizationConfig())
    options = layer_options(model, config, (1, 2, 4), traces)
    for choices in options.values():
        assert [o.bits for o in choices] == [1, 2, 4]
        assert choices[0].size_bytes < choices[1].size_bytes < choices[2].size_bytes
        assert choices[0].cost > choices[2].cost
    assert qbert_block_bits(SENSITIVITIES, 1, 2) == {"b0": 1, "b1": 2, "b2": 2, "b3": 1}
