import json
from pathlib import Path

import pytest
import torch

from quantization.artifact import WEIGHTS, ArtifactError, read_artifact
from quantization.build import load_checkpoint
from quantization.feature_tensors import pad_features
from quantization.runtime import (
    Int8Linear,
    QuantizedEmbedding,
    StackedQKVSelfAttention,
    build_model,
    load_model,
    onednn_int8_is_usable,
)
from quantization.tasks import get_task
from tests.conftest import build_tiny_artifact


def _batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    task = get_task("sst2")
    return pad_features([task.preprocess(tokenizer, t, 64)[0] for t in texts])


def _fake_quantized_reference(checkpoint_dir: Path, artifact_dir: Path) -> torch.nn.Module:
    """The FP32 model with every quantized weight replaced by its dequantized values."""
    reference = load_checkpoint(str(checkpoint_dir), "sst2").model
    artifact = read_artifact(artifact_dir)
    for entry in artifact.manifest["tensors"]:
        if entry["bits"] != 32:
            reference.get_submodule(entry["module"]).weight.data = artifact.quantized_weight(entry).dequantize()
    return reference


@pytest.mark.parametrize("precision", ["w8", "w4g128", "w3g128", "w2g128", "direct-w2"])
def test_int8_runtime_matches_the_dequantized_model(tmp_path: Path, tiny_checkpoints: dict, precision: str) -> None:
    artifact = build_tiny_artifact(tmp_path, tiny_checkpoints["sst2"], "sst2", precision)
    loaded = load_model(artifact)
    linears = [m for m in loaded.model.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 8  # per layer: stacked Q/K/V, attention output, FFN in, FFN out
    assert sum(isinstance(m, StackedQKVSelfAttention) for m in loaded.model.modules()) == 2
    assert not any(isinstance(m, torch.nn.Linear) for m in loaded.model.bert.encoder.modules())
    assert sum(isinstance(m, QuantizedEmbedding) for m in loaded.model.modules()) == 3
    assert all(m.packed for m in linears) == onednn_int8_is_usable()
    batch = _batch(loaded.tokenizer, ["a good movie", "john smith lives in paris and plays"])
    reference = _fake_quantized_reference(tiny_checkpoints["sst2"], artifact)
    with torch.inference_mode():
        ours, ref = loaded.model(**batch).logits, reference(**batch).logits
    # The only difference left is 8-bit dynamic activation quantization.
    assert torch.allclose(ours, ref, atol=0.05, rtol=0.05), (ours, ref)


def test_fp32_artifact_reproduces_the_checkpoint(tmp_path: Path, tiny_checkpoints: dict) -> None:
    artifact = build_tiny_artifact(tmp_path, tiny_checkpoints["sst2"], "sst2", "fp32")
    loaded = load_model(artifact)
    original = load_checkpoint(str(tiny_checkpoints["sst2"]), "sst2").model
    batch = _batch(loaded.tokenizer, ["a terrible film"])
    with torch.inference_mode():
        ours, theirs = loaded.model(**batch).logits, original(**batch).logits
    # The same FP32 weights, bit for bit (checked first); the logits to float32 rounding, since BLAS may pick
    # another kernel for tensors at other addresses (seen on an AVX2-only CPU: 1e-8 apart).
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_manifest_records_sizes_hashes_and_tensors(tmp_path: Path, tiny_checkpoints: dict) -> None:
    artifact = build_tiny_artifact(tmp_path, tiny_checkpoints["sst2"], "sst2", "w2g128")
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert manifest["task"] == "sst2"
    assert manifest["labels"] == ["negative", "positive"]
    assert len(manifest["base_checkpoint"]["sha256"]) == 64
    assert set(manifest["files"]) >= {WEIGHTS, "config.json", "vocab.txt", "tokenizer.json"}
    summary = manifest["summary"]
    assert summary["avg_bits_encoder"] == 2.0
    assert summary["avg_bits_embeddings"] == 8.0
    assert summary["encoder_compression"] > 10  # tiny rows make scales weigh more than on MiniLM
    query = next(e for e in manifest["tensors"] if e["name"].endswith("layer.0.attention.self.query.weight"))
    assert query | {"packed_bytes": 0} == query | {
        "bits": 2,
        "granularity": "groupwise",
        "num_groups": 48,
        "head_rows": 12,
        "symmetric": False,
        "role": "attention_qkv",
        "packed_bytes": 0,
    }
    # Really packed: the safetensors file holds 2-bit codes, 4 per byte.
    tensors = read_artifact(artifact).tensors
    assert tensors["bert.encoder.layer.0.attention.self.query.weight.qdata"].numel() == 48 * 48 // 4
    assert "bert.encoder.layer.0.attention.self.query.weight" not in tensors
    assert not list(artifact.glob("*.bin"))
    assert not list(artifact.glob("*.pt"))
    # Readable by other users: a container's non-root server reads artifacts built by another user.
    assert all(path.stat().st_mode & 0o044 == 0o044 for path in artifact.iterdir()), [
        (path.name, oct(path.stat().st_mode)) for path in artifact.iterdir()
    ]


def test_loaded_model_reports_its_costs(tmp_path: Path, tiny_checkpoints: dict) -> None:
    loaded = load_model(build_tiny_artifact(tmp_path, tiny_checkpoints["sst2"], "sst2", "w4g128"))
    assert loaded.load_seconds > 0
    assert loaded.packed_bytes > 0
    assert loaded.runtime_bytes > loaded.packed_bytes  # sub-8-bit codes run unpacked as int8
    assert loaded.task == "sst2"
    assert loaded.precision == "w4g128"


def test_corrupted_weights_are_refused_naming_the_file(tmp_path: Path, tiny_checkpoints: dict) -> None:
    artifact = build_tiny_artifact(tmp_path, tiny_checkpoints["sst2"], "sst2", "w4g128")
    data = bytearray((artifact / WEIGHTS).read_bytes())
    data[-10] ^= 0xFF
    (artifact / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{WEIGHTS}: sha256 .* does not match"):
        load_model(artifact)


def test_tampered_tokenizer_and_missing_files_are_refused(tmp_path: Path, tiny_checkpoints: dict) -> None:
    artifact = build_tiny_artifact(tmp_path, tiny_checkpoints["sst2"], "sst2", "w8")
    with (artifact / "vocab.txt").open("a") as handle:
        handle.write("injected\n")
    with pytest.raises(ArtifactError, match="vocab.txt: sha256"):
        load_model(artifact)
    (artifact / "vocab.txt").unlink()
    with pytest.raises(ArtifactError, match="vocab.txt: listed in the manifest but missing"):
        load_model(artifact)


def test_schema_mismatch_and_bad_manifest_are_refused(tmp_path: Path, tiny_checkpoints: dict) -> None:
    artifact = build_tiny_artifact(tmp_path, tiny_checkpoints["sst2"], "sst2", "w8")
    manifest = json.loads((artifact / "manifest.json").read_text())
    (artifact / "manifest.json").write_text(json.dumps(manifest | {"schema_version": 99}))
    with pytest.raises(ArtifactError, match="schema_version 99"):
        load_model(artifact)
    (artifact / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_model(artifact)
    with pytest.raises(ArtifactError, match="no manifest"):
        load_model(tmp_path / "nowhere")


@pytest.mark.parametrize("task", ["ner", "qa"])
def test_token_and_span_heads_load_quantized(tmp_path: Path, tiny_checkpoints: dict, task: str) -> None:
    loaded = load_model(build_tiny_artifact(tmp_path, tiny_checkpoints[task], task, "w3g128"))
    assert sum(isinstance(m, Int8Linear) for m in loaded.model.modules()) == 8


@pytest.mark.parametrize("precision", ["w8", "w2g128"])
def test_stacked_qkv_gives_exactly_the_separate_projections_results(
    tmp_path: Path, tiny_checkpoints: dict, precision: str
) -> None:
    artifact = read_artifact(build_tiny_artifact(tmp_path, tiny_checkpoints["qa"], "qa", precision))
    separate, _ = build_model(artifact, stack_qkv=False)
    stacked, _ = build_model(read_artifact(artifact.path), stack_qkv=True)
    assert not any(isinstance(m, StackedQKVSelfAttention) for m in separate.modules())
    ids = torch.randint(5, 100, (3, 19))
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0  # padding goes through the attention mask
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.inference_mode():
        for a, b in zip(separate(**batch).values(), stacked(**batch).values(), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("asymmetric", [False, True])
def test_packed_weights_change_the_kernel_not_the_numbers(asymmetric: bool) -> None:
    """oneDNN's packed int8 GEMM gives what `torch._int_mm` on the row-major matrix gives, and both give
    x_q · (s_r · (c − z_r))ᵀ computed in float64, row zero points included."""
    if not onednn_int8_is_usable():
        pytest.skip(
            "oneDNN's int8 GEMM is not exact or not fast on this CPU: the layers multiply int8 values in float32"
        )
    generator = torch.Generator().manual_seed(0)
    out_features, in_features = 48, 64
    codes = torch.randint(0, 8, (out_features, in_features), generator=generator, dtype=torch.int8)
    row_scale = torch.rand(out_features, generator=generator) / 10 + 0.01
    row_zero = torch.randint(0, 8, (out_features,), generator=generator, dtype=torch.int32) if asymmetric else None
    bias = torch.randn(out_features, generator=generator)
    plain = Int8Linear(codes.clone(), row_scale, row_zero, bias, bits=3)
    packed = Int8Linear(codes.clone(), row_scale, row_zero, bias, bits=3)
    packed.pack()
    assert packed.packed
    assert not plain.packed
    x = torch.randn(2, 7, in_features, generator=generator)
    with torch.inference_mode():
        y_plain, y_packed = plain(x), packed(x)
    torch.testing.assert_close(y_packed, y_plain, rtol=1e-6, atol=1e-5)

    rows = x.reshape(-1, in_features).double()
    token_scale = rows.abs().amax(1, keepdim=True) / 127
    zero = (row_zero if row_zero is not None else torch.zeros(out_features)).double()
    weight = row_scale.double()[:, None] * (codes.double() - zero[:, None])
    expected = (torch.round(rows / token_scale) * token_scale) @ weight.T + bias.double()
    torch.testing.assert_close(y_packed.reshape(-1, out_features).double(), expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="before packing"):
        Int8Linear.stacked([packed, plain])
