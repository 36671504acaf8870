"""GPTQ rounding on a fixed grid, and the calibration statistics it needs."""

from __future__ import annotations

import pytest
import torch
import transformers

from quantization.calibration import input_hessians
from quantization.config import ActivationQuantConfig, PrecisionConfig, QATConfig, Rounding, WeightQuantConfig
from quantization.gptq import gptq_codes, input_hessian_update
from quantization.primitives import dequantize, quantize
from quantization.qat import prepare_qat
from quantization.qtensor import QuantizedWeight
from tests.conftest import tiny_config


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(40, 96, generator=generator)
    inputs = torch.randn(500, 96, generator=generator) @ torch.randn(96, 96, generator=generator)  # correlated
    hessian = torch.zeros(96, 96, dtype=torch.float64)
    input_hessian_update(hessian, inputs)
    scale = (weight.amax(1) - weight.amin(1)) / 3
    zero = torch.round(-weight.amin(1) / scale)
    return weight, inputs, hessian, scale, zero


def _output_error(weight: torch.Tensor, inputs: torch.Tensor, approx: torch.Tensor) -> float:
    return float((inputs @ weight.T - inputs @ approx.T).pow(2).sum())


def test_input_hessian_is_twice_x_transpose_x() -> None:
    x = torch.randn(7, 5)
    hessian = torch.zeros(5, 5, dtype=torch.float64)
    input_hessian_update(hessian, x[:3])
    input_hessian_update(hessian, x[3:])
    assert torch.allclose(hessian, 2 * (x.double().T @ x.double()), atol=1e-10)


def test_gptq_lowers_the_output_error_of_nearest_rounding_on_the_same_grid() -> None:
    weight, inputs, hessian, scale, zero = _problem()
    codes = gptq_codes(weight, hessian, scale, zero, bits=2)
    nearest = quantize(weight, scale, zero, 2)
    assert codes.dtype == torch.uint8
    assert int(codes.max()) <= 3
    gptq_error = _output_error(weight, inputs, dequantize(codes, scale, zero))
    assert gptq_error < 0.8 * _output_error(weight, inputs, dequantize(nearest, scale, zero))


def test_blocked_updates_equal_column_by_column() -> None:
    weight, _, hessian, scale, zero = _problem(seed=1)
    assert torch.equal(
        gptq_codes(weight, hessian, scale, zero, 2, block_size=32),
        gptq_codes(weight, hessian, scale, zero, 2, block_size=1),
    )


def test_an_identity_hessian_gives_nearest_rounding_and_dead_inputs_are_safe() -> None:
    weight, _, _, scale, zero = _problem(seed=2)
    identity = torch.eye(96, dtype=torch.float64)
    assert torch.equal(gptq_codes(weight, identity, scale, zero, 3), quantize(weight, scale, zero, 3))
    dead = identity.clone()
    dead[5, 5] = 0.0  # an input never seen in calibration
    assert torch.equal(gptq_codes(weight, dead, scale, zero, 3), quantize(weight, scale, zero, 3))


def test_gptq_config_needs_the_hessian_and_keeps_old_hashes() -> None:
    config = WeightQuantConfig(bits=2, num_groups=8, range_method="mse", rounding="gptq")
    assert config.rounding is Rounding.GPTQ
    assert config.with_bits(3).rounding is Rounding.GPTQ
    assert config.to_dict()["rounding"] == "gptq"
    assert "rounding" not in WeightQuantConfig(bits=2).to_dict()  # nearest: the dict as before the field existed
    weight, _, hessian, _, _ = _problem()
    with pytest.raises(ValueError, match="input Hessian"):
        QuantizedWeight.from_float(weight, config)
    packed = QuantizedWeight.from_float(weight, config, input_hessian=hessian)
    nearest = QuantizedWeight.from_float(weight, WeightQuantConfig(bits=2, num_groups=8, range_method="mse"))
    assert torch.equal(packed.scale, nearest.scale)  # same grid, other codes
    assert not torch.equal(packed.codes, nearest.codes)
    with pytest.raises(ValueError, match="embeddings are rounded to nearest"):
        PrecisionConfig(name="x", weights=config, embeddings=config, activations=ActivationQuantConfig())


def test_calibration_hessians_count_real_tokens_only() -> None:
    torch.manual_seed(0)
    config = tiny_config("sst2", layers=1)
    model = transformers.BertForSequenceClassification(config).eval()
    name = "bert.encoder.layer.0.attention.output.dense"
    ids = torch.randint(5, config.vocab_size, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    batch = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask}
    seen = []
    handle = model.get_submodule(name).register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    hessians = input_hessians(model, [batch], [name])
    handle.remove()
    x = seen[0].reshape(-1, seen[0].shape[-1])[mask.reshape(-1).bool()]
    assert torch.allclose(hessians[name], 2 * (x.T @ x).double(), rtol=1e-5, atol=1e-6)
    assert not model.get_submodule(name)._forward_pre_hooks or len(model.get_submodule(name)._forward_pre_hooks) == 0


def test_qat_refuses_gptq_rounding() -> None:
    model = transformers.BertForSequenceClassification(tiny_config("sst2", layers=1))
    precision = PrecisionConfig(
        name="x",
        weights=WeightQuantConfig(bits=2, num_groups=8, rounding="gptq"),
        activations=ActivationQuantConfig(),
        qat=QATConfig(),
    )
    with pytest.raises(ValueError, match="GPTQ rounding is PTQ only"):
        prepare_qat(model, precision, precision.qat)
