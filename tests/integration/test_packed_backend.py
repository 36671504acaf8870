"""The packed backend (the default) on tiny random BERTs: the artifact's codes multiplied while packed at their own
width, exactly the formula, with a fallback where the kernels cannot run and a refusal where a model disagrees
with its reference."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from quantization.artifact import read_artifact
from quantization.runtime import check_inputs, load_model, warm_up
from quantization.runtime import loading as runtime_loading
from quantization.runtime import packed_kernels as kernels
from quantization.runtime.building import build_model
from quantization.runtime.loaded import BackendMismatchError
from quantization.runtime.modules import FusedResidualLayerNormOutput, StackedQKVSelfAttention
from quantization.runtime.packed_linear import PackedLinear
from service.protocol import ArtifactRef, RunBatch, WorkerSpec
from service.worker import InferenceWorker
from tests.integration.backends import EVERY_WIDTH_CASES, against_float64, build_tiny

UNAVAILABLE = kernels.unavailable_reason()
needs_kernels = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"packed kernels unavailable: {UNAVAILABLE}")


@needs_kernels
@pytest.mark.parametrize(
    ("task", "precision", "layer_bits"),
    EVERY_WIDTH_CASES,
)
def test_the_packed_backend_computes_the_formula(
    tmp_path: Path, tiny_checkpoints: dict, task: str, precision: str, layer_bits: dict | None
) -> None:
    """Compiled, against s_t·x_q·(s·(c − z))ᵀ + b in float64 from the artifact's own codes, scales and zero points
    (a token whose input lands on a rounding boundary in one precision and not the other moves by one code step).
    Attention in float32, as the formula has it (bf16 attention: the test after)."""
    artifact = build_tiny(tmp_path, tiny_checkpoints[task], task, precision, layer_bits)
    loaded = warm_up(load_model(artifact, backend="packed", attention_precision="float32"))
    assert loaded.backend == "packed"
    linears = [m for m in loaded.model.modules() if isinstance(m, PackedLinear)]
    assert linears
    assert all(layer.packed for layer in linears)
    # each encoder layer's two output blocks (attention's and the feed-forward's) sum and normalize in our kernel
    fused_norms = [m for m in loaded.model.modules() if isinstance(m, FusedResidualLayerNormOutput)]
    assert len(fused_norms) == 2 * loaded.config.num_hidden_layers
    ours, exact = against_float64(loaded, tiny_checkpoints[task], task, artifact)
    for got, want in zip(ours, exact, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize(("products", "rtol"), [("bf16", 2e-2), ("int16", 5e-3)])
def test_low_precision_attention_stays_within_its_rounding(
    tmp_path: Path, tiny_checkpoints: dict, products: str, rtol: float
) -> None:
    """ "bf16" (where the CPU has AVX-512 BF16) and "int16" run attention's products on those operands: the model's
    outputs move from the float32-attention model's (the default, which the test above holds to the formula) by
    the operands' rounding, not more, and they do move (the setting reaches the kernel)."""
    if products == "bf16" and not kernels.attention_bf16_supported():
        pytest.skip("the CPU has no AVX-512 BF16")
    artifact = build_tiny(tmp_path, tiny_checkpoints["qa"], "qa", "w8")
    low = warm_up(load_model(artifact, backend="packed", attention_precision=products))
    float32 = warm_up(load_model(artifact, backend="packed"))
    attention = [m for m in low.model.modules() if isinstance(m, StackedQKVSelfAttention)]
    assert attention
    assert all(m.products == products for m in attention)
    assert all(m.products == "float32" for m in float32.model.modules() if isinstance(m, StackedQKVSelfAttention))
    ids = torch.randint(5, 100, (3, 40), generator=torch.Generator().manual_seed(2))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    with torch.inference_mode():
        ours, exact = low.model(**batch), float32.model(**batch)
    for name in ("start_logits", "end_logits"):
        got, want = ours[name], exact[name]
        assert 0 < float((got - want).abs().max()) <= rtol * float(want.abs().max())


@needs_kernels
def test_attention_precision_setting(tmp_path: Path, tiny_checkpoints: dict) -> None:
    """float32 and int16 always; bf16 only where the CPU has it (else float32, logged); an unknown name is
    refused."""
    artifact = read_artifact(build_tiny(tmp_path, tiny_checkpoints["sst2"], "sst2", "w8"))
    model, _ = build_model(artifact, linear_factory=PackedLinear.from_quantized)
    attention = [m for m in model.modules() if isinstance(m, StackedQKVSelfAttention)]
    supported = kernels.attention_bf16_supported()
    assert runtime_loading.set_attention_precision(model, "bf16") == ("bf16" if supported else "float32")
    assert runtime_loading.set_attention_precision(model, "int16") == "int16"
    assert all(m.products == "int16" for m in attention)
    assert runtime_loading.set_attention_precision(model, "float32") == "float32"
    assert all(m.products == "float32" for m in attention)
    with pytest.raises(ValueError, match="unknown attention precision"):
        runtime_loading.set_attention_precision(model, "fp8")


@needs_kernels
def test_runtime_bytes_follow_bits(tmp_path: Path, tiny_checkpoints: dict) -> None:
    """Exactly: from w8, each encoder weight takes (8 − bits)/8 bytes less. Per block (hidden 48, FFN 192), rows
    padded to the kernel's 64-row blocks: Q, K and V stacked 144 → 192 rows, attention out 48 → 64, FFN in 192,
    FFN out 48 → 64: (192 + 64 + 192) · 48 + 64 · 192 = 33,792 weights."""
    sizes = {
        p: load_model(build_tiny(tmp_path, tiny_checkpoints["sst2"], "sst2", p), backend="packed").runtime_bytes
        for p in ("w8", "w4g128", "w3g128", "w2g128")
    }
    assert sizes["w2g128"] < sizes["w3g128"] < sizes["w4g128"] < sizes["w8"], sizes
    weights = 2 * 33_792
    for precision, bits in (("w4g128", 4), ("w2g128", 2)):
        assert sizes["w8"] - sizes[precision] == weights * (8 - bits) // 8, (precision, sizes)


def test_where_the_kernels_cannot_run_the_compiled_backend_serves(
    tmp_path: Path, tiny_checkpoints: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unavailable():
        raise kernels.KernelsUnavailableError("the CPU has no AVX-512 VNNI (forced)")

    monkeypatch.setattr("quantization.runtime.packed_linear.packed_kernels", unavailable)
    artifact = build_tiny(tmp_path, tiny_checkpoints["sst2"], "sst2", "w4g128")
    with caplog.at_level(logging.WARNING):
        loaded = warm_up(load_model(artifact, backend="packed"))
    assert loaded.backend == "compiled"
    assert "no AVX-512 VNNI (forced)" in caplog.text
    ours, exact = against_float64(loaded, tiny_checkpoints["sst2"], "sst2", artifact)
    torch.testing.assert_close(ours[0], exact[0], rtol=1e-3, atol=1e-5)


@needs_kernels
def test_a_model_outside_tolerance_is_refused_and_the_others_serve(
    tmp_path: Path, tiny_checkpoints: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A packing bug that stores 4-bit codes reversed (15 − c): the load-time check against the reference sees it."""
    good = build_tiny(tmp_path / "good", tiny_checkpoints["sst2"], "sst2", "w8")
    bad = build_tiny(tmp_path / "bad", tiny_checkpoints["ner"], "ner", "w4g128")
    pack = PackedLinear.pack

    def pack_reversed(self: PackedLinear) -> None:
        if self.bits == 4 and not self.packed:
            self.codes = 15 - self.codes
        pack(self)

    monkeypatch.setattr(PackedLinear, "pack", pack_reversed)
    with pytest.raises(
        BackendMismatchError, match=r"w4g128: the packed model.s bert.encoder.layer.0.attention.self.qkv differs from"
    ):
        load_model(bad, backend="packed")

    spec = WorkerSpec(
        index=0,
        threads=1,
        artifacts=(ArtifactRef("sst2", "w8", good), ArtifactRef("ner", "w4g128", bad)),
        max_tokens=64,
        max_batch_tokens=256,
        backend="packed",
    )
    worker = InferenceWorker(spec)
    ready = worker.setup()
    assert [(m.task, m.precision) for m in ready.models] == [("sst2", "w8")]
    assert [(f.task, f.precision) for f in ready.failures] == [("ner", "w4g128")]
    assert "differs from the reference" in ready.failures[0].reason
    done = worker.run(RunBatch(0, "sst2", "w8", ("a good movie",)))
    assert done.results[0].error is None


@needs_kernels
def test_one_wrong_row_scale_is_caught_layer_by_layer(tmp_path: Path, tiny_checkpoints: dict) -> None:
    """The layer check sees a 1 % error in one row of one layer, which a whole-model comparison could not tell
    from activation rounding."""
    artifact = read_artifact(build_tiny(tmp_path, tiny_checkpoints["sst2"], "sst2", "w8"))
    reference, _ = build_model(artifact)
    model, _ = build_model(artifact, linear_factory=PackedLinear.from_quantized)
    inputs = check_inputs(reference.config.vocab_size)
    runtime_loading.check_layers(artifact, reference, model, inputs)  # as built: passes
    layer = model.bert.encoder.layer[1].output.dense
    layer.row_scale[5] *= 1.01
    with pytest.raises(BackendMismatchError, match=r"encoder\.layer\.1\.output\.dense differs"):
        runtime_loading.check_layers(artifact, reference, model, inputs)
