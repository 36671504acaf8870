"""PTQ1.61's algorithm (`binarization`) and layout (`binarized`): mask, signs, fitted factors, exact storage and the
bits it costs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from quantization.binarization import binarize, damped, output_error, salient_channels
from quantization.binarized import BinarizedWeight
from quantization.config import (
    ActivationQuantConfig,
    BinarizationConfig,
    PrecisionConfig,
    PreprocessingConfig,
    QATConfig,
    WeightQuantConfig,
)
from quantization.packing import packed_nbytes

PTQ161 = BinarizationConfig()
PLAIN = BinarizationConfig(salient_fraction=0.0, row_mean=False, column_scales=False, refinement_passes=0)


def _layer(rows: int = 24, columns: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and the input Hessian 2·XᵀX of correlated inputs with a few outlier channels, as BERT's are."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=generator) * 0.05
    mixing = torch.eye(columns) + 0.3 * torch.randn(columns, columns, generator=generator)
    inputs = torch.randn(512, columns, generator=generator) @ mixing
    inputs[:, [3, 17]] *= 20.0
    return weight, 2 * inputs.double().T @ inputs.double()


def test_plain_binarization_is_sign_times_the_row_mean_magnitude() -> None:
    weight, _ = _layer()
    expected = torch.sign(weight) * weight.abs().mean(1, keepdim=True)
    approx = BinarizedWeight.from_float(weight, WeightQuantConfig(bits=1, binarization=PLAIN)).dequantize()
    torch.testing.assert_close(approx, expected.double(), rtol=1e-3, atol=0)  # the row scale stored as float16


def test_the_mask_keeps_the_channels_whose_inputs_are_largest() -> None:
    weight, hessian = _layer()
    for saliency in ("error-bound", "activation"):
        config = BinarizationConfig(salient_fraction=0.1, saliency=saliency)
        chosen = salient_channels(weight, config, hessian)
        assert chosen.tolist() == sorted(chosen.tolist())
        assert chosen.numel() == 4
        assert {3, 17} <= set(chosen.tolist()), saliency


def test_every_refinement_pass_lowers_the_output_error() -> None:
    weight, hessian = _layer()
    h = damped(hessian)
    errors = [
        output_error(weight, binarize(weight, replace(PTQ161, refinement_passes=n), hessian).dequantize(), h)
        for n in range(4)
    ]
    assert all(later <= earlier * (1 + 1e-9) for earlier, later in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.8 * errors[0], errors


def test_masked_binarization_beats_binarizing_everything() -> None:
    weight, hessian = _layer()
    h = damped(hessian)
    config = WeightQuantConfig(bits=1, binarization=PTQ161)
    masked = BinarizedWeight.from_float(weight, config, hessian).dequantize()
    unmasked = BinarizedWeight.from_float(
        weight, WeightQuantConfig(bits=1, binarization=replace(PTQ161, salient_fraction=0.0)), hessian
    ).dequantize()
    assert output_error(weight, masked, h) < 0.5 * output_error(weight, unmasked, h)


@pytest.mark.parametrize(
    "config",
    [
        PTQ161,
        PLAIN,
        BinarizationConfig(salient_fraction=0.3, salient_bits=2, row_mean=False),
        BinarizationConfig(salient_fraction=0.05, salient_bits=8, column_scales=False),
    ],
    ids=["ptq161", "plain", "2-bit-salient", "8-bit-salient"],
)
def test_storage_round_trip_is_exact(config: BinarizationConfig) -> None:
    weight, hessian = _layer(rows=21, columns=37)  # neither a multiple of 8: the packers pad
    original = BinarizedWeight.from_float(weight, WeightQuantConfig(bits=1, binarization=config), hessian)
    stored = original.to_storage("w")
    assert set(BinarizedWeight.storage_names("w", {**stored, "w2.mask": torch.zeros(1)})) == set(stored)
    loaded = BinarizedWeight.from_storage(stored, "w", (21, 37), config.salient_bits)
    assert torch.equal(loaded.salient_index, original.salient_index)
    assert torch.equal(loaded.rest.signs, original.rest.signs)
    assert torch.equal(loaded.dequantize(), original.dequantize())
    # the bytes it reports are the bytes it stores
    assert original.packed_nbytes() == sum(t.numel() * t.element_size() for t in stored.values())


def test_bits_per_weight_count_codes_and_mask_exactly() -> None:
    """A fifth of 384 channels (77) at 4 bits, 307 at 1 bit, and a 384-bit mask over a 384 × 384 matrix."""
    weight, hessian = _layer(rows=384, columns=384)
    packed = BinarizedWeight.from_float(weight, WeightQuantConfig(bits=1, binarization=PTQ161), hessian)
    assert packed.salient_index.numel() == 77
    assert packed.code_bits_per_weight() == (384 * 307 + 384 * 77 * 4 + 384) / (384 * 384)
    assert packed.mask_bits_per_weight() == 1 / 384  # the mask: one bit per input channel
    assert 1.60 < packed.code_bits_per_weight() < 1.61
    stored = packed.to_storage("w")
    assert stored["w.mask"].numel() == packed_nbytes(384, 1) == 48
    assert stored["w.signs"].numel() == 384 * 307 // 8


def test_configs_are_checked() -> None:
    with pytest.raises(ValueError, match="binarization"):
        WeightQuantConfig(bits=1)
    for bad in ({"salient_fraction": 1.0}, {"salient_bits": 1}, {"saliency": "random"}, {"refinement_passes": -1}):
        with pytest.raises(ValueError, match="must be"):
            BinarizationConfig(**bad)
    weights = WeightQuantConfig(bits=2)
    eight = ActivationQuantConfig()
    with pytest.raises(ValueError, match="binarization"):
        PrecisionConfig("p", weights=weights, activations=eight, layer_bits={"layer": 1})
    with pytest.raises(ValueError, match="embeddings are not binarized"):
        PrecisionConfig(
            "p", weights=weights, embeddings=WeightQuantConfig(bits=1, binarization=PTQ161), activations=eight
        )
    with pytest.raises(ValueError, match="not QAT"):
        PrecisionConfig("p", weights=weights, activations=eight, qat=QATConfig(), preprocessing=PreprocessingConfig())
    with pytest.raises(ValueError, match="needs quantized weights"):
        PrecisionConfig("p", preprocessing=PreprocessingConfig())
    with pytest.raises(ValueError, match="rank ≥ 1"):
        PreprocessingConfig(rank=0)
    assert "binarization" not in WeightQuantConfig(bits=2).to_dict()  # older artifacts' inputs hashes are unchanged
    data = WeightQuantConfig(bits=1, binarization=PTQ161).to_dict()
    assert WeightQuantConfig.from_dict(data) == WeightQuantConfig(bits=1, binarization=PTQ161)


def test_choosing_the_mask_or_fitting_needs_calibration_inputs() -> None:
    weight, _ = _layer()
    with pytest.raises(ValueError, match="calibration inputs"):
        BinarizedWeight.from_float(weight, WeightQuantConfig(bits=1, binarization=PTQ161))
    assert not PLAIN.needs_inputs
    assert PTQ161.needs_inputs
