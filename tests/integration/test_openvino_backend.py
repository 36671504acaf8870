"""The openvino backend on tiny random BERTs: the artifact's codes run packed, exactly (float32 activations) or
through the plugin's int8 kernels (its default), with a safe fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from quantization.runtime import check_inputs, load_model
from service.protocol import ArtifactRef, RunBatch, WorkerSpec
from service.worker import InferenceWorker
from tests.integration.backends import EVERY_WIDTH_CASES, MIXED, against_float64, build_tiny

openvino = pytest.importorskip("openvino")
from quantization.runtime import openvino_backend  # noqa: E402  (after the skip: it needs the package)


@pytest.mark.parametrize(
    ("task", "precision", "layer_bits"),
    EVERY_WIDTH_CASES,
)
def test_openvino_runs_the_recorded_codes_exactly(
    tmp_path: Path, tiny_checkpoints: dict, task: str, precision: str, layer_bits: dict | None
) -> None:
    """Against s_t·x_q·(s·(c − z))ᵀ + b computed in float64 from the artifact's own codes, scales and zero
    points (a rare token whose input lands on a rounding boundary in one precision and not the other moves by
    one code step: hence 1e-3, not 1e-6)."""
    artifact = build_tiny(tmp_path, tiny_checkpoints[task], task, precision, layer_bits)
    loaded = load_model(artifact, backend="openvino", openvino_activation_group_size=0)
    assert loaded.backend == "openvino"
    ours, exact = against_float64(loaded, tiny_checkpoints[task], task, artifact)
    for got, want in zip(ours, exact, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    ("task", "precision", "layer_bits"),
    [("sst2", "w8", None), ("sst2", "w4g128", None), ("sst2", "w2g128", None), ("qa", "w2g128", MIXED)],
)
def test_the_plugins_int8_kernels_stay_close_to_the_formula(
    tmp_path: Path, tiny_checkpoints: dict, task: str, precision: str, layer_bits: dict | None
) -> None:
    """The default: the plugin rounds activations per group of 16 channels (finer than per token) and multiplies
    in int8. Not the formula, but close to it: within 2 % of the largest output;
    and not the float32 model (which the int8 rounding would be if the plugin did not quantize)."""
    artifact = build_tiny(tmp_path, tiny_checkpoints[task], task, precision, layer_bits)
    loaded = load_model(artifact, backend="openvino", openvino_activation_group_size=16)
    assert loaded.backend == "openvino"
    ours, exact = against_float64(loaded, tiny_checkpoints[task], task, artifact)
    for got, want in zip(ours, exact, strict=True):
        diff = float((got - want).abs().max())
        assert 0 < diff <= 0.02 * float(want.abs().max()), diff


def _fully_connected_weight_precisions(loaded) -> list[str]:
    """The element type of each FullyConnected's weight constant in the plugin's executable graph."""
    runtime = loaded.model.compiled.get_runtime_model()
    precisions = []
    for node in runtime.get_ops():
        if node.get_rt_info()["layerType"].astype(str) != "FullyConnected":
            continue
        weight = node.input(1).get_source_output().get_node()
        precisions.append(weight.get_rt_info()["runtimePrecision"].astype(str))
    return precisions


@pytest.mark.parametrize("group_size", [0, 16])
def test_codes_stay_packed_in_the_plugin_and_runtime_bytes_follow_bits(
    tmp_path: Path, tiny_checkpoints: dict, group_size: int
) -> None:
    """Exact (0): each width at its own bits where the plugin keeps it; int8 kernels (16): 2 bits as u4."""
    widths = openvino_backend.stored_widths(plugin_quantizes=group_size > 0)
    loaded = {
        p: load_model(
            build_tiny(tmp_path, tiny_checkpoints["sst2"], "sst2", p),
            backend="openvino",
            openvino_activation_group_size=group_size,
        )
        for p in ("w8", "w4g128", "w2g128")
    }
    for precision, bits in (("w8", 8), ("w4g128", 4), ("w2g128", 2)):
        encoder = _fully_connected_weight_precisions(loaded[precision])
        assert encoder.count(f"u{widths[bits]}") == 2 * 6, encoder  # 2 blocks × Q, K, V, out, FFN in, FFN out
    sizes = {p: m.runtime_bytes for p, m in loaded.items()}
    assert sizes["w2g128"] <= sizes["w4g128"] < sizes["w8"], sizes
    assert (sizes["w2g128"] < sizes["w4g128"]) == (widths[2] < widths[4]), sizes
    # exactly: the encoder's codes shrink by 6 bits per weight from w8 to w2 (2 blocks of 12 · 48² weights)
    codes = 2 * 12 * 48 * 48
    assert sizes["w8"] - sizes["w2g128"] == codes * (8 - widths[2]) // 8


def test_a_backend_that_cannot_build_falls_back_to_the_reference(
    tmp_path: Path, tiny_checkpoints: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    artifact = build_tiny(tmp_path, tiny_checkpoints["sst2"], "sst2", "w4g128")

    def refuse(*args, **kwargs):
        raise RuntimeError("forced: this op cannot be compiled")

    monkeypatch.setattr(openvino.Core, "compile_model", refuse)
    with caplog.at_level(logging.WARNING):
        loaded = load_model(artifact, backend="openvino")
    assert loaded.backend == "eager"
    assert "forced: this op cannot be compiled" in caplog.text
    assert "reference (eager)" in caplog.text
    batch = check_inputs(loaded.model.config.vocab_size)
    with torch.inference_mode():
        assert loaded.model(**batch).logits.shape == (2, 2)


def test_a_missing_package_falls_back_too(
    tmp_path: Path, tiny_checkpoints: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing():
        raise openvino_backend.BackendUnavailableError("the openvino package is not installed (forced)")

    monkeypatch.setattr(openvino_backend, "_openvino", missing)
    artifact = build_tiny(tmp_path, tiny_checkpoints["sst2"], "sst2", "w8")
    assert load_model(artifact, backend="openvino").backend == "eager"


def test_a_model_outside_tolerance_is_refused_and_the_others_serve(
    tmp_path: Path, tiny_checkpoints: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A packing bug that stores 4-bit codes reversed (15 − c): the load-time check sees it."""
    from openvino import opset13 as ops

    good = build_tiny(tmp_path / "good", tiny_checkpoints["sst2"], "sst2", "w8")
    bad = build_tiny(tmp_path / "bad", tiny_checkpoints["ner"], "ner", "w4g128")
    store = openvino_backend._store_codes_packed

    def store_reversed(ov_model, widths, stored):
        widths = dict(widths)
        for node in ov_model.get_ordered_ops():
            if node.get_type_name() != "Constant" or widths.get(openvino_backend._digest(node.get_data())) != 4:
                continue
            reversed_codes = ops.constant(15 - node.get_data())  # still u8 here: stored as u4 below
            for target in list(node.output(0).get_target_inputs()):
                target.replace_source_output(reversed_codes.output(0))
            widths[openvino_backend._digest(15 - node.get_data())] = widths.pop(
                openvino_backend._digest(node.get_data())
            )
        return store(ov_model, widths, stored)

    monkeypatch.setattr(openvino_backend, "_store_codes_packed", store_reversed)
    with pytest.raises(openvino_backend.BackendMismatchError, match=r"w4g128.*differ from the reference by"):
        load_model(bad, backend="openvino")

    spec = WorkerSpec(
        index=0,
        threads=1,
        artifacts=(ArtifactRef("sst2", "w8", good), ArtifactRef("ner", "w4g128", bad)),
        max_tokens=64,
        max_batch_tokens=256,
        backend="openvino",
    )
    worker = InferenceWorker(spec)
    ready = worker.setup()
    assert [(m.task, m.precision, m.backend) for m in ready.models] == [("sst2", "w8", "openvino")]
    assert [(f.task, f.precision) for f in ready.failures] == [("ner", "w4g128")]
    assert "differ from the reference" in ready.failures[0].reason
    done = worker.run(RunBatch(0, "sst2", "w8", ("a good movie",)))
    assert done.results[0].error is None
