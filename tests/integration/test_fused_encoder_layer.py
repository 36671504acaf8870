"""Encoder layers as one kernel call (`FusedEncoderLayer`, `FusedEncoder`) give exactly the values of their parts
called one by one, sequence-parallel or step by step, at every width and in mixed plans."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantization.artifact import read_artifact
from quantization.runtime import load_model
from quantization.runtime import packed_kernels as kernels
from quantization.runtime.building import build_model
from quantization.runtime.fused_encoder_layer import FusedEncoder, FusedEncoderLayer
from quantization.runtime.packed_linear import PackedLinear
from tests.integration.backends import EVERY_WIDTH_CASES, LAYER, MIXED, build_tiny

# A mixed plan whose Q, K and V share a width per block (so that they stack), every other part at another width
STACKABLE_MIXED = {
    **{LAYER.format(0, f"attention.self.{p}"): 2 for p in ("query", "key", "value")},
    LAYER.format(0, "attention.output.dense"): 8,
    LAYER.format(0, "intermediate.dense"): 3,
    LAYER.format(0, "output.dense"): 4,
    **{LAYER.format(1, f"attention.self.{p}"): 3 for p in ("query", "key", "value")},
    LAYER.format(1, "intermediate.dense"): 8,
    LAYER.format(1, "output.dense"): 2,
}
CASES = [(task, precision, STACKABLE_MIXED if bits == MIXED else bits) for task, precision, bits in EVERY_WIDTH_CASES]

# lowbit_linear.cpp's chunk budget: where a GEMM's codes fill one chunk per thread, the threads split its tokens
CHUNK_CODE_BYTES = 96 * 1024
UNAVAILABLE = kernels.unavailable_reason()
needs_kernels = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"packed kernels unavailable: {UNAVAILABLE}")


def _layer_inputs(batch: int, seq: int, width: int, padded_from: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch * 100 + seq)
    hidden = torch.randn(batch, seq, width, generator=generator)
    allowed = torch.ones(batch, 1, seq, seq, dtype=torch.bool)
    if padded_from is not None:  # every other sequence padded: sequences of one batch differ in length
        allowed[1::2, :, :, padded_from:] = False
    return hidden, allowed


@needs_kernels
@pytest.mark.parametrize(("task", "precision", "layer_bits"), CASES)
def test_the_fused_layer_equals_its_parts(
    tmp_path: Path, tiny_checkpoints: dict, task: str, precision: str, layer_bits: dict | None
) -> None:
    loaded = load_model(build_tiny(tmp_path, tiny_checkpoints[task], task, precision, layer_bits), backend="packed")
    layers = [m for m in loaded.model.modules() if isinstance(m, FusedEncoderLayer)]
    assert len(layers) == loaded.config.num_hidden_layers
    if layer_bits:
        assert len({(m.attention.self.qkv.bits, m.intermediate.dense.bits) for m in layers}) == len(layers)
    width = loaded.config.hidden_size
    threads = torch.get_num_threads()
    try:
        for thread_count in (1, 2):
            torch.set_num_threads(thread_count)
            # fewer sequences than threads, as many, more with a remainder (sequence-parallel, then step by step), and
            # one sequence whose codes fill a chunk per thread (each GEMM then splits its tokens between the threads)
            long_seq = 2 * CHUNK_CODE_BYTES // width + 7
            for batch, seq, padded_from in ((1, 9, None), (2, 17, 5), (3, 8, 3), (5, 33, 20), (1, long_seq, None)):
                hidden, allowed = _layer_inputs(batch, seq, width, padded_from)
                for layer in layers:
                    with torch.inference_mode():
                        fused, parts = layer(hidden, allowed), layer.step_by_step(hidden, allowed)
                    assert torch.equal(fused, parts), (thread_count, batch, seq, float((fused - parts).abs().max()))
    finally:
        torch.set_num_threads(threads)


@needs_kernels
@pytest.mark.parametrize(("task", "precision", "layer_bits"), [CASES[0], CASES[4]])
def test_the_fused_encoder_equals_its_layers(
    tmp_path: Path, tiny_checkpoints: dict, task: str, precision: str, layer_bits: dict | None
) -> None:
    """All layers in one call, in place, each thread taking its sequences layer by layer: the layers' values."""
    loaded = load_model(build_tiny(tmp_path, tiny_checkpoints[task], task, precision, layer_bits), backend="packed")
    encoders = [m for m in loaded.model.modules() if isinstance(m, FusedEncoder)]
    assert len(encoders) == 1
    encoder = encoders[0]
    threads = torch.get_num_threads()
    try:
        for thread_count in (1, 2):
            torch.set_num_threads(thread_count)
            for batch, seq, padded_from in ((1, 9, None), (2, 17, 5), (5, 33, 20)):
                hidden, allowed = _layer_inputs(batch, seq, loaded.config.hidden_size, padded_from)
                with torch.inference_mode():
                    fused = encoder(hidden, allowed).last_hidden_state
                    layers = encoder.step_by_step(hidden, allowed).last_hidden_state
                assert not torch.equal(fused, hidden)
                assert torch.equal(fused, layers), (thread_count, batch, seq)
    finally:
        torch.set_num_threads(threads)


@needs_kernels
def test_the_fused_layer_takes_a_key_mask_or_none(tmp_path: Path, tiny_checkpoints: dict) -> None:
    """A [batch, 1, 1, seq] key mask and no mask at all, as transformers may pass them."""
    loaded = load_model(build_tiny(tmp_path, tiny_checkpoints["sst2"], "sst2", "w8"), backend="packed")
    layer = next(m for m in loaded.model.modules() if isinstance(m, FusedEncoderLayer))
    hidden, allowed = _layer_inputs(4, 12, loaded.config.hidden_size, 7)
    with torch.inference_mode():
        assert torch.equal(layer(hidden, allowed[:, :, :1, :]), layer.step_by_step(hidden, allowed))
        assert torch.equal(layer(hidden, None), layer.step_by_step(hidden, torch.ones_like(allowed)))


@needs_kernels
def test_the_fused_layers_outputs_are_recorded_as_hidden_states(tmp_path: Path, tiny_checkpoints: dict) -> None:
    """transformers records `output_hidden_states` from BERT's layer modules: the fused layers are recorded alike
    (the fused encoder then runs them one by one)."""
    artifact = read_artifact(build_tiny(tmp_path, tiny_checkpoints["sst2"], "sst2", "w8"))
    model, _ = build_model(artifact, linear_factory=PackedLinear.from_quantized)
    layers = [m for m in model.modules() if isinstance(m, FusedEncoderLayer)]
    assert len(layers) == model.config.num_hidden_layers
    assert any(isinstance(m, FusedEncoder) for m in model.modules())
    ids = torch.randint(5, 100, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        states = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states
        assert len(states) == len(layers) + 1
        for layer, before, after in zip(layers, states[:-1], states[1:], strict=True):
            assert torch.equal(layer.step_by_step(before, None), after)
