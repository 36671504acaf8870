"""Artifact directories: `manifest.json` + `weights.safetensors` + config and tokenizer files.

No pickle anywhere: tensors live in safetensors, everything else in JSON. The manifest records the
sha256 of every other file; `read_artifact` verifies the schema and every checksum before any
tensor is used, and names the offending file when something is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from quantization.artifact_files import MANIFEST, MODEL_CONFIG, TOKENIZER_FILES, WEIGHTS
from quantization.binarized import BinarizedWeight
from quantization.config import PrecisionConfig, QATConfig
from quantization.primitives import group_offsets
from quantization.qtensor import QDATA, SCALE, ZERO_POINT, QuantizedWeight
from quantization.quantize import QuantizedState

SCHEMA_VERSION = 1
BINARIZED_LAYOUT = "binarized"  # a tensor entry's `layout` for PTQ1.61 weights (`BinarizedWeight`); absent: uniform


class ArtifactError(RuntimeError):
    """An artifact is missing, of another schema, corrupt or tampered with."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def precision_to_dict(precision: PrecisionConfig) -> dict[str, Any]:
    return {
        "name": precision.name,
        "weights": precision.weights.to_dict() if precision.weights else None,
        "embeddings": precision.embeddings.to_dict() if precision.embeddings else None,
        "activations": asdict(precision.activations) if precision.activations else None,
        "layer_bits": dict(precision.layer_bits),
        # Only where set, so the inputs hash (and `qbert build`'s up-to-date check) of PTQ artifacts is unchanged.
        **({"qat": qat_to_dict(precision.qat)} if precision.qat else {}),
        **({"preprocessing": asdict(precision.preprocessing)} if precision.preprocessing else {}),
    }


def qat_to_dict(qat: QATConfig) -> dict[str, Any]:
    """The recipe's fields; Quant-Noise's, the start's and hidden-state distillation's only where not the default, so
    that plain QAT artifacts' inputs hash is unchanged."""
    data = asdict(qat)
    if not qat.quant_noise:
        for key in ("noise_rate", "noise_unit", "noise_block"):
            data.pop(key)
    if qat.start == "checkpoint":  # likewise
        data.pop("start")
    if qat.hidden_distill_weight == 0:  # likewise
        data.pop("hidden_distill_weight")
    return data


def _tensor_entries(state: QuantizedState) -> list[dict[str, Any]]:
    entries = []
    for name, qweight in state.quantized.items():
        planned = state.plan[name]
        entry: dict[str, Any] = {
            "name": f"{name}.weight",
            "module": name,
            "role": planned.target.role.value,
            "shape": list(qweight.shape),
        }
        if isinstance(qweight, BinarizedWeight):
            entry |= {
                "bits": 1,
                "layout": BINARIZED_LAYOUT,
                "salient_channels": int(qweight.salient_index.numel()),
                "salient_bits": qweight.salient.bits if qweight.salient is not None else None,
                # codes and mask (PTQ1.61's count); packed_bytes holds every stored byte, factors included
                "bits_per_weight": round(qweight.code_bits_per_weight(), 6),
                "mask_bits_per_weight": round(qweight.mask_bits_per_weight(), 6),
            }
        else:
            entry |= {
                "bits": qweight.bits,
                "granularity": planned.config.granularity.value,
                "num_groups": int(qweight.scale.numel()),
                "head_rows": planned.target.head_rows,
                "symmetric": planned.config.symmetric,
                "range_method": planned.config.range_method.value,
            }
        entry["packed_bytes"] = qweight.packed_nbytes()
        entries.append(entry)
    for name, tensor in state.fp32.items():
        entries.append({"name": name, "shape": list(tensor.shape), "bits": 32, "packed_bytes": tensor.numel() * 4})
    return entries


def summarize(entries: list[dict[str, Any]], encoder_weight_names: set[str], embedding_names: set[str]) -> dict:
    """Sizes of encoder Linear weights and embeddings, packed versus FP32 (scales included)."""

    def totals(names: set[str]) -> tuple[int, int, float]:
        chosen = [e for e in entries if e["name"] in names]
        numel = sum(_numel(e["shape"]) for e in chosen)
        packed = sum(e["packed_bytes"] for e in chosen)
        bits = sum(_numel(e["shape"]) * e.get("bits_per_weight", e["bits"]) for e in chosen) / numel if numel else 0.0
        return packed, numel * 4, bits

    enc_packed, enc_fp32, enc_bits = totals(encoder_weight_names)
    emb_packed, emb_fp32, emb_bits = totals(embedding_names)
    encoder_numel = enc_fp32 // 4
    all_packed = sum(e["packed_bytes"] for e in entries)
    all_fp32 = sum(_numel(e["shape"]) * 4 for e in entries)
    return {
        "avg_bits_encoder": round(enc_bits, 4),
        # every stored byte of the encoder weights (scales, zero points, masks, factors) in bits per weight
        "avg_bits_encoder_all_in": round(8 * enc_packed / encoder_numel, 4) if encoder_numel else 0.0,
        "avg_bits_embeddings": round(emb_bits, 4),
        "encoder_packed_bytes": enc_packed,
        "encoder_fp32_bytes": enc_fp32,
        "encoder_compression": round(enc_fp32 / enc_packed, 3) if enc_packed else None,
        "embedding_packed_bytes": emb_packed,
        "embedding_fp32_bytes": emb_fp32,
        "total_packed_bytes": all_packed,
        "total_fp32_bytes": all_fp32,
        "total_compression": round(all_fp32 / all_packed, 3) if all_packed else None,
    }


def _numel(shape: list[int]) -> int:
    numel = 1
    for dim in shape:
        numel *= dim
    return numel


@dataclass(frozen=True)
class ArtifactSource:
    """Where an artifact came from: the checkpoint (path or hub id) and its weights' sha256."""

    task: str
    labels: list[str]
    checkpoint: str
    checkpoint_sha256: str
    checkpoint_dir: Path  # local folder holding the config and tokenizer files
    inputs_sha256: str  # hash of everything the build depends on, for `qbert build`
    task_spec: dict[str, Any] | None = None  # the task's kind and options (`TaskEntry.spec`)


def write_artifact(
    out_dir: Path,
    state: QuantizedState,
    precision: PrecisionConfig,
    source: ArtifactSource,
    encoder_weight_names: set[str],
    embedding_names: set[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write an artifact atomically (a temporary folder renamed into place); returns the manifest."""
    out_dir = Path(out_dir)
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = dict(state.fp32)
    for name, qweight in state.quantized.items():
        tensors.update(qweight.to_storage(f"{name}.weight"))
    save_file(tensors, str(tmp_dir / WEIGHTS), metadata={"format": "qbert", "schema_version": str(SCHEMA_VERSION)})
    # safetensors writes 0600; an artifact is read by other users (a container's non-root server).
    (tmp_dir / WEIGHTS).chmod(0o644)
    for file_name in (MODEL_CONFIG, *TOKENIZER_FILES):
        if (source.checkpoint_dir / file_name).exists():
            shutil.copyfile(source.checkpoint_dir / file_name, tmp_dir / file_name)
    entries = _tensor_entries(state)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "format": "qbert-artifact",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": source.task,
        "task_spec": source.task_spec,
        "labels": source.labels,
        "base_checkpoint": {"source": source.checkpoint, "sha256": source.checkpoint_sha256},
        "inputs_sha256": source.inputs_sha256,
        "precision": precision_to_dict(precision),
        "tensors": entries,
        "summary": summarize(entries, encoder_weight_names, embedding_names),
        "evaluation": [],
        "files": {p.name: sha256_file(p) for p in sorted(tmp_dir.iterdir())},
        **(extra or {}),
    }
    (tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp_dir.rename(out_dir)
    return manifest


def read_manifest(artifact_dir: Path) -> dict[str, Any]:
    """The manifest alone, schema-checked (file checksums are verified by `read_artifact`)."""
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: no manifest; not a qbert artifact (build it with `qbert build`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: manifest is not valid JSON ({err})") from err
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: schema_version {version!r}, this qbert reads {SCHEMA_VERSION}; rebuild it")
    return manifest


def verify_files(artifact_dir: Path, manifest: dict[str, Any]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise ArtifactError(f"{Path(artifact_dir) / MANIFEST}: no checksum recorded for {WEIGHTS}")
    for file_name, expected in files.items():
        path = Path(artifact_dir) / file_name
        if Path(file_name).name != file_name:
            raise ArtifactError(f"{Path(artifact_dir) / MANIFEST}: file entry {file_name!r} is not a plain name")
        if not path.is_file():
            raise ArtifactError(f"{path}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{path}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}…; "
                "the artifact is corrupt or was tampered with"
            )


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def stored_names(self, entry: dict[str, Any]) -> list[str]:
        """The safetensors entries holding a quantized weight."""
        if entry.get("layout") == BINARIZED_LAYOUT:
            return BinarizedWeight.storage_names(entry["name"], self.tensors)
        return [f"{entry['name']}.{suffix}" for suffix in (QDATA, SCALE, ZERO_POINT)]

    def quantized_weight(self, entry: dict[str, Any]) -> QuantizedWeight | BinarizedWeight:
        """The quantized weight a manifest tensor entry describes (its groups recomputed from the entry)."""
        if entry.get("layout") == BINARIZED_LAYOUT:
            return BinarizedWeight.from_storage(
                self.tensors, entry["name"], tuple(entry["shape"]), entry["salient_bits"] or 0
            )
        offsets = group_offsets(entry["shape"][0], entry["num_groups"], entry.get("head_rows"))
        return QuantizedWeight.from_storage(self.tensors, entry["name"], tuple(entry["shape"]), entry["bits"], offsets)


def read_artifact(artifact_dir: Path) -> Artifact:
    """Load an artifact after checking its schema and the sha256 of every file it lists."""
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    verify_files(artifact_dir, manifest)
    try:
        tensors = load_file(str(artifact_dir / WEIGHTS))
    except Exception as err:  # safetensors raises several types for malformed files
        raise ArtifactError(f"{artifact_dir / WEIGHTS}: unreadable safetensors file ({err})") from err
    return Artifact(artifact_dir, manifest, tensors)


def record_evaluation(artifact_dir: Path, results: list[dict[str, Any]]) -> None:
    """Store evaluation results in the manifest (which no checksum covers), replacing old ones."""
    path = Path(artifact_dir) / MANIFEST
    manifest = read_manifest(artifact_dir)
    manifest["evaluation"] = results
    path.write_text(json.dumps(manifest, indent=2) + "\n")
