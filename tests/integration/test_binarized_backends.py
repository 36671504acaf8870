"""PTQ1.61 artifacts (1-bit weights with 4-bit salient channels) on every backend: each computes the float64 formula
of the artifact's own 1.61-bit weights, a plan mixing 1-bit layers with 2/3/4/8-bit ones runs, and the packed backend
keeps the sign codes at one bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantization.runtime import load_model, openvino_backend, warm_up
from quantization.runtime import packed_kernels as kernels
from quantization.runtime.binarized_linear import BinarizedLinear
from quantization.runtime.packed_linear import PackedLinear
from tests.integration.backends import LAYER, against_float64, build_tiny

# Every width in one model: 1-bit (PTQ1.61) by default, the others named.
MIXED_WITH_ONE_BIT = {
    LAYER.format(0, "attention.self.key"): 2,
    LAYER.format(0, "intermediate.dense"): 3,
    LAYER.format(1, "attention.self.value"): 4,
    LAYER.format(1, "output.dense"): 8,
}
BACKENDS = ["eager", "compiled"]
if kernels.unavailable_reason() is None:
    BACKENDS.append("packed")
if openvino_backend.unavailable_reason() is None:
    BACKENDS.append("openvino")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: dict) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ptq161")
    return {
        "ptq161": build_tiny(root, tiny_checkpoints["sst2"], "sst2", "ptq161"),
        "binary": build_tiny(root, tiny_checkpoints["sst2"], "sst2", "binary"),
        "mixed": build_tiny(root, tiny_checkpoints["qa"], "qa", "ptq161", MIXED_WITH_ONE_BIT),
    }


# every case on the reference; the others (each compile costs tens of seconds) on the mix, which holds every width
CASES = [("eager", case) for case in ("ptq161", "binary", "mixed")] + [
    (backend, "mixed") for backend in BACKENDS if backend != "eager"
]


@pytest.mark.parametrize(("backend", "case"), CASES)
def test_every_backend_computes_the_formula_of_the_stored_weights(
    artifacts: dict[str, Path], tiny_checkpoints: dict, backend: str, case: str
) -> None:
    task = "qa" if case == "mixed" else "sst2"
    loaded = warm_up(load_model(artifacts[case], backend=backend, attention_precision="float32"))
    assert loaded.backend == backend  # no fallback
    if backend != "openvino":
        assert any(isinstance(m, BinarizedLinear) for m in loaded.model.modules())
    ours, exact = against_float64(loaded, tiny_checkpoints[task], task, artifacts[case])
    # OpenVINO's int8 kernels round activations in groups of their own (see its backend): the plugin's tolerance
    rtol = 3e-2 if backend == "openvino" else 1e-3
    for got, want in zip(ours, exact, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=rtol * float(want.abs().max()) + 1e-5)


def test_the_manifest_reports_the_bits_exactly(artifacts: dict[str, Path]) -> None:
    from quantization.artifact import read_artifact

    manifest = read_artifact(artifacts["ptq161"]).manifest
    binarized = [e for e in manifest["tensors"] if e.get("layout") == "binarized"]
    assert len(binarized) == 12  # every encoder Linear of the two blocks
    for entry in binarized:
        rows, inputs = entry["shape"]
        salient = entry["salient_channels"]
        assert salient == round(0.2 * inputs)
        expected = (rows * (inputs - salient) + 4 * rows * salient + inputs) / (rows * inputs)
        assert entry["bits_per_weight"] == pytest.approx(expected, abs=1e-6)
        assert entry["mask_bits_per_weight"] == pytest.approx(1 / rows, abs=1e-6)
    weights = sum(e["shape"][0] * e["shape"][1] for e in binarized)
    average = sum(e["bits_per_weight"] * e["shape"][0] * e["shape"][1] for e in binarized) / weights
    assert manifest["summary"]["avg_bits_encoder"] == pytest.approx(average, abs=1e-4)
    all_in = 8 * sum(e["packed_bytes"] for e in binarized) / weights
    assert manifest["summary"]["avg_bits_encoder_all_in"] == pytest.approx(all_in, abs=1e-4)


@pytest.mark.skipif(kernels.unavailable_reason() is not None, reason="packed kernels unavailable")
def test_the_packed_backend_keeps_sign_codes_at_one_bit(artifacts: dict[str, Path]) -> None:
    loaded = load_model(artifacts["ptq161"], backend="packed")
    layers = [m for m in loaded.model.modules() if isinstance(m, BinarizedLinear)]
    assert layers
    for layer in layers:
        assert isinstance(layer.rest, PackedLinear)
        assert layer.rest.bits == 1
        assert layer.rest.packed
        blocks, groups, parts, tile_bytes = layer.rest.codes.shape
        # 64-row blocks of 32-input groups, 8 codes a byte: exactly one bit per (padded) weight
        assert blocks * groups * parts * tile_bytes * 8 == (blocks * 64) * (groups * 32)
        assert blocks * 64 - layer.out_features < 64
        assert groups * 32 - layer.rest.in_features < 32
        assert torch.equal(layer.rest.unpacked_codes(), (torch.sign(layer_signs(loaded, layer)) > 0).to(torch.uint8))


def layer_signs(loaded, layer: BinarizedLinear) -> torch.Tensor:  # noqa: ANN001
    from quantization.artifact import read_artifact

    artifact = read_artifact(loaded.path)
    name = next(n for n, m in loaded.model.named_modules() if m is layer).removeprefix("compiled._orig_mod.")
    entry = next(e for e in artifact.manifest["tensors"] if e.get("module") == name)
    return artifact.quantized_weight(entry).rest.signs.to(torch.float32)


def test_preprocessing_restores_then_requantizes(tmp_path: Path, tiny_checkpoints: dict) -> None:
    """PTQ1.61's preprocessing: a few steps of low-rank corrections on the first PTQ1.61 model, merged, quantized
    again; the record says what ran, and the weights that were quantized are no longer the checkpoint's."""
    from dataclasses import replace

    from quantization.artifact import read_artifact
    from quantization.build import build_artifact, load_checkpoint
    from quantization.config import PreprocessingConfig
    from tests.conftest import tiny_entry, write_tiny_data
    from tests.integration.backends import CATALOG

    precision = CATALOG.precision_for("sst2", "ptq161-pre")
    precision = replace(precision, preprocessing=PreprocessingConfig(rank=4, steps=6, learning_rate=1e-2))
    data = write_tiny_data(tmp_path / "data")
    checkpoint = load_checkpoint(str(tiny_checkpoints["sst2"]), "sst2")
    entry = tiny_entry("sst2", tiny_checkpoints["sst2"], data)
    build_artifact(checkpoint, entry, precision, tmp_path / "pre")
    build_artifact(checkpoint, entry, replace(precision, name="plain", preprocessing=None), tmp_path / "plain")
    pre, plain = read_artifact(tmp_path / "pre"), read_artifact(tmp_path / "plain")
    record = pre.manifest["preprocessing"]
    assert record["steps"] == 6
    assert record["config"] == {"rank": 4, "steps": 6, "learning_rate": 1e-2}
    assert record["split"].startswith("train")
    assert pre.manifest["precision"]["preprocessing"]["rank"] == 4
    entries = [e for e in pre.manifest["tensors"] if e.get("layout") == "binarized"]
    moved = sum(
        not torch.equal(pre.quantized_weight(e).dequantize(), plain.quantized_weight(e).dequantize()) for e in entries
    )
    assert moved == len(entries)
    loaded = warm_up(load_model(tmp_path / "pre", backend="eager"))
    assert loaded.backend == "eager"


def test_lowrank_correction_starts_at_the_quantized_weights() -> None:
    from quantization.preprocessing import LowRankCorrection

    correction = LowRankCorrection(6, 5, 2, torch.Generator().manual_seed(0))
    weight = torch.randn(6, 5)
    assert torch.equal(correction(weight), weight)
    with torch.no_grad():
        correction.up.fill_(1.0)
    torch.testing.assert_close(correction(weight), weight + correction.down.sum(0, keepdim=True).expand(6, 5))
