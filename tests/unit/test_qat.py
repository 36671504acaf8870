"""Quantization-aware training: straight-through fake quantizers that pack exactly, and a loss that goes down."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import transformers

from quantization.artifact import qat_to_dict
from quantization.build import load_checkpoint, quantize_checkpoint
from quantization.config import ActivationQuantConfig, PrecisionConfig, QATConfig, WeightQuantConfig
from quantization.qat import (
    ActivationFakeQuant,
    QuantNoise,
    WeightFakeQuant,
    distillation_loss,
    hidden_state_loss,
    prepare_qat,
    train_qat,
)
from quantization.qtensor import QuantizedWeight
from quantization.runtime import load_model
from tests.conftest import VOCAB, tiny_config


def _model(task: str = "sst2", seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    config = tiny_config(task, layers=2)
    return getattr(transformers, config.architectures[0])(config).eval()


def _precision(bits: int = 3, qat: QATConfig | None = None) -> PrecisionConfig:
    return PrecisionConfig(
        name="w-qat",
        weights=WeightQuantConfig(bits=bits, num_groups=8, range_method="mse"),
        embeddings=WeightQuantConfig(bits=8, granularity="per_channel"),
        activations=ActivationQuantConfig(),
        qat=qat or QATConfig(steps=60, batch_size=8, learning_rate=1e-3, distill_weight=0.0),
    )


def test_qat_config_is_validated() -> None:
    with pytest.raises(ValueError, match="activation_ranges"):
        QATConfig(activation_ranges="minmax")
    with pytest.raises(ValueError, match="distill_weight"):
        QATConfig(distill_weight=1.5)
    with pytest.raises(ValueError, match="qat need weights"):
        PrecisionConfig(name="fp32", qat=QATConfig())
    for bad in ({"noise_rate": 0.0}, {"noise_rate": 1.5}, {"noise_unit": "row"}, {"noise_block": 0}):
        with pytest.raises(ValueError, match="Quant-Noise"):
            QATConfig(**bad)


def test_plain_qat_recipes_keep_their_inputs_hash_fields() -> None:
    assert "noise_rate" not in qat_to_dict(QATConfig())  # artifacts built before Quant-Noise stay up to date
    assert qat_to_dict(QATConfig(noise_rate=0.5, noise_unit="layer"))["noise_unit"] == "layer"
    assert "hidden_distill_weight" not in qat_to_dict(QATConfig())
    assert qat_to_dict(QATConfig(hidden_distill_weight=2.0))["hidden_distill_weight"] == 2.0


def test_quant_noise_masks_blocks_of_a_row_or_whole_layers_at_the_rate() -> None:
    torch.manual_seed(0)
    mask = QuantNoise(0.25, "block", 8).mask(torch.Size([64, 100]), torch.device("cpu"))
    assert mask.shape == (64, 100)
    assert 0.2 < float(mask.float().mean()) < 0.3
    blocks = mask[:, :96].reshape(64, 12, 8)
    assert torch.equal(blocks.all(dim=2), blocks.any(dim=2))  # each block of 8 is quantized whole or not at all
    layers = [bool(QuantNoise(0.5, "layer").mask(torch.Size([4, 4]), torch.device("cpu")).all()) for _ in range(200)]
    assert 60 < sum(layers) < 140
    torch.manual_seed(1)
    first = QuantNoise(0.5).mask(torch.Size([8, 16]), torch.device("cpu"))
    torch.manual_seed(1)
    assert torch.equal(first, QuantNoise(0.5).mask(torch.Size([8, 16]), torch.device("cpu")))  # follows the seed


def test_quant_noise_quantizes_the_masked_units_in_training_and_everything_in_evaluation() -> None:
    torch.manual_seed(0)
    weight = torch.randn(24, 16, requires_grad=True)
    config = WeightQuantConfig(bits=2, num_groups=6, range_method="mse")
    noise = QuantNoise(0.5, "block", 4)
    fake = WeightFakeQuant(config, rows=24, head_rows=None, refresh_every=1, noise=noise)
    quantized = QuantizedWeight.from_float(weight, config).dequantize()
    torch.manual_seed(7)
    out = fake(weight)
    torch.manual_seed(7)
    mask = noise.mask(weight.shape, weight.device)
    assert 0 < int(mask.sum()) < mask.numel()
    assert torch.allclose(out.detach()[mask], quantized[mask], atol=1e-6, rtol=0)
    assert torch.equal(out.detach()[~mask], weight.detach()[~mask])  # full precision where not drawn
    out.backward(torch.ones_like(out))
    assert torch.equal(weight.grad, torch.ones_like(weight))  # straight through everywhere
    fake.eval()
    assert torch.allclose(fake(weight).detach(), quantized, atol=1e-6, rtol=0)


def test_weight_fake_quant_equals_the_packed_quantizer_with_identity_gradient() -> None:
    torch.manual_seed(0)
    weight = torch.randn(24, 16, requires_grad=True)
    config = WeightQuantConfig(bits=2, num_groups=6, range_method="mse")
    fake = WeightFakeQuant(config, rows=24, head_rows=12, refresh_every=1)
    out = fake(weight)
    packed = QuantizedWeight.from_float(weight, config, head_rows=12).dequantize()
    assert torch.allclose(out.detach(), packed, atol=1e-6, rtol=0)  # w + (ŵ - w): ŵ up to float rounding
    out.backward(torch.arange(24 * 16, dtype=torch.float32).reshape(24, 16))
    assert torch.equal(weight.grad, torch.arange(24 * 16, dtype=torch.float32).reshape(24, 16))  # straight through


def test_dynamic_activation_fake_quant_rounds_each_token_to_8_bits() -> None:
    x = torch.tensor([[[0.5, -1.0, 0.25], [100.0, 3.0, -50.0]]], requires_grad=True)
    y = ActivationFakeQuant("dynamic", 0.9)(x)
    for token in range(2):
        scale = x[0, token].abs().max() / 127
        codes = y[0, token] / scale
        assert torch.allclose(codes, codes.round(), atol=1e-4)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_ema_activation_ranges_track_the_running_max_in_training_only() -> None:
    quantizer = ActivationFakeQuant("ema", 0.5)
    quantizer.train()
    quantizer(torch.tensor([2.0, -1.0]))
    quantizer(torch.tensor([4.0, 1.0]))
    assert float(quantizer.running_max) == pytest.approx(3.0)  # 2 at first, then 0.5·2 + 0.5·4
    quantizer.eval()
    quantizer(torch.tensor([100.0]))
    assert float(quantizer.running_max) == pytest.approx(3.0)
    assert float(quantizer(torch.tensor([100.0]))) == pytest.approx(3.0)  # clipped to the learnt range


def _batches(model: transformers.PreTrainedModel, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(5, model.config.vocab_size, (8, 12), generator=generator)
    labels = (inputs[:, 1] % 2).long()  # learnable from the first token
    while True:
        yield {
            "input_ids": inputs,
            "token_type_ids": torch.zeros_like(inputs),
            "attention_mask": torch.ones_like(inputs),
            "labels": labels,
        }


def test_training_lowers_the_loss_and_strip_leaves_plain_trained_weights() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    precision = _precision()
    prepared = prepare_qat(model, precision, precision.qat)
    assert any("parametrizations" in k for k in model.state_dict())
    log = train_qat(prepared, _batches(model), precision.qat)
    assert log.final_loss < 0.5 * log.first_loss
    stripped = prepared.strip()
    assert set(stripped.state_dict()) == set(before)  # names unchanged, no quantizer left behind
    assert not torch.equal(
        stripped.state_dict()["bert.encoder.layer.0.output.dense.weight"],
        before["bert.encoder.layer.0.output.dense.weight"],
    )
    assert not stripped.bert.encoder.layer[0].output.dense._forward_pre_hooks


@pytest.mark.parametrize(
    "noise",
    [{}, {"noise_rate": 0.3, "noise_unit": "block", "noise_block": 4}, {"noise_rate": 0.5, "noise_unit": "layer"}],
    ids=["plain", "quant-noise-blocks", "quant-noise-layers"],
)
def test_trained_weights_pack_without_further_loss(tmp_path: Path, noise: dict) -> None:
    """The fake-quantized model (ranges of the final weights) computes what the packed int8 runtime computes, also
    after Quant-Noise training (which quantized only part of the weights in each training pass)."""
    model = _model("ner", seed=2)
    recipe = QATConfig(steps=5, batch_size=8, learning_rate=1e-3, distill_weight=0.0, **noise)
    precision = _precision(bits=2, qat=recipe)
    prepared = prepare_qat(model, precision, precision.qat)
    train_qat(prepared, ({**b, "labels": b["input_ids"] % 9} for b in _batches(model)), precision.qat)
    modules = dict(model.named_modules())
    for name, quantizer in prepared.weight_quantizers.items():  # the ranges packing will choose
        quantizer.refresh(modules[name].parametrizations.weight.original)
    inputs = {k: v for k, v in next(_batches(model, seed=5)).items() if k != "labels"}
    with torch.no_grad():
        fake = model(**inputs).logits
    trained = prepared.strip()
    trained.save_pretrained(tmp_path / "trained")
    (tmp_path / "trained" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    checkpoint = load_checkpoint(str(tmp_path / "trained"), "ner")
    quantize_checkpoint(checkpoint, "ner", precision, tmp_path / "artifact", {"qat": True})
    from quantization.runtime.packed_kernels import unavailable_reason

    # The int8 reference, and (once: it builds our kernels' graph) the default backend on the packed 2-bit codes.
    backends = ["eager"] + (["packed"] if noise and unavailable_reason() is None else [])
    for backend in backends:
        loaded = load_model(tmp_path / "artifact", backend, attention_precision="float32")  # the formula's
        assert loaded.backend == backend
        with torch.no_grad():
            real = loaded.model(**inputs).logits
        assert torch.allclose(fake, real, atol=1e-4, rtol=1e-3), (backend, float((fake - real).abs().max()))


def test_distillation_loss_is_zero_against_itself_and_ignores_padding() -> None:
    logits = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    same = transformers.modeling_outputs.TokenClassifierOutput(logits=logits)
    assert float(distillation_loss(same, same, mask)) == pytest.approx(0.0, abs=1e-6)
    other = logits.clone()
    other[0, 3:] += 10.0  # differs on padding only
    assert float(distillation_loss(same, dataclasses.replace(same, logits=other), mask)) == pytest.approx(0.0, abs=1e-6)
    start = transformers.modeling_outputs.QuestionAnsweringModelOutput(
        start_logits=logits[..., 0], end_logits=logits[..., 1]
    )
    moved = transformers.modeling_outputs.QuestionAnsweringModelOutput(
        start_logits=-logits[..., 0], end_logits=logits[..., 1]
    )
    assert float(distillation_loss(start, moved, mask)) > 0


def test_hidden_state_loss_compares_blocks_on_real_tokens_only() -> None:
    states = tuple(torch.randn(2, 5, 4) for _ in range(3))  # embeddings, then two blocks
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert float(hidden_state_loss(states, states, mask)) == 0.0
    moved = tuple(s.clone() for s in states)
    moved[0][:] += 5.0  # the embeddings' output is not a block's
    moved[1][0, 3:] += 5.0  # padding
    assert float(hidden_state_loss(states, moved, mask)) == 0.0
    moved[2][1, 0, 0] += 4.0  # one value of 32 per block (8 real tokens x 4), in one of the two blocks
    assert float(hidden_state_loss(states, moved, mask)) == pytest.approx(16.0 / 32 / 2)
    with pytest.raises(ValueError, match="layers"):
        hidden_state_loss(states, states[:2], mask)


def test_hidden_state_distillation_keeps_the_quantized_blocks_near_fp32() -> None:
    """The same 2-bit training run with and without the hidden-state term: with it, the student's blocks end closer
    to the FP32 teacher's."""
    teacher = _model(seed=3)
    inputs = {k: v for k, v in next(_batches(teacher, seed=4)).items() if k != "labels"}

    def trained_gap(weight: float) -> float:
        student = _model(seed=3)
        recipe = QATConfig(steps=30, batch_size=8, learning_rate=1e-3, distill_weight=0.0, hidden_distill_weight=weight)
        prepared = prepare_qat(student, _precision(bits=2, qat=recipe), recipe)
        train_qat(prepared, _batches(student), recipe, teacher=teacher)
        with torch.no_grad():
            s = student(**inputs, output_hidden_states=True).hidden_states
            t = teacher(**inputs, output_hidden_states=True).hidden_states
        return float(hidden_state_loss(s, t, inputs["attention_mask"]))

    assert trained_gap(100.0) < 0.5 * trained_gap(0.0)


def test_prepare_refuses_a_plan_naming_unknown_modules() -> None:
    precision = dataclasses.replace(_precision(), layer_bits={"bert.encoder.layer.9.output.dense": 3})
    with pytest.raises(ValueError, match="layer.9"):
        prepare_qat(_model(), precision, precision.qat)


def test_qat_started_from_gptq_begins_at_the_gptq_artifacts_weights(tmp_path: Path, tiny_checkpoints: dict) -> None:
    """`start = "gptq"`: before any step, the student's Linear weights are the GPTQ-rounded values the PTQ artifact
    of the same widths stores; the recipe field stays out of plain recipes' inputs hash."""
    from quantization.artifact import read_artifact
    from quantization.build import _start_from_gptq, build_artifact
    from tests.conftest import tiny_entry, write_tiny_data
    from tests.integration.backends import CATALOG

    data = write_tiny_data(tmp_path / "data")
    checkpoint = load_checkpoint(str(tiny_checkpoints["sst2"]), "sst2")
    entry = tiny_entry("sst2", tiny_checkpoints["sst2"], data)
    build_artifact(checkpoint, entry, CATALOG.precision_for("sst2", "w4g128"), tmp_path / "gptq")
    artifact = read_artifact(tmp_path / "gptq")
    qat = CATALOG.precision_for("sst2", "w4g128-qat")
    student = load_checkpoint(str(tiny_checkpoints["sst2"]), "sst2").model
    _start_from_gptq(checkpoint, entry, qat, student)
    linears = [e for e in artifact.manifest["tensors"] if e.get("role") not in (None, "embedding") and e["bits"] != 32]
    assert linears
    for entry_ in linears:
        expected = artifact.quantized_weight(entry_).dequantize()
        torch.testing.assert_close(student.get_submodule(entry_["module"]).weight.data, expected, rtol=0, atol=0)
    assert "start" not in qat_to_dict(QATConfig())
    assert qat_to_dict(QATConfig(start="gptq"))["start"] == "gptq"
    with pytest.raises(ValueError, match="start must be"):
        QATConfig(start="zero")
