"""Inference models built from artifacts, running real int8 kernels.

Quantized Linear layers become `Int8Linear`: the stored 2/3/4/8-bit codes are unpacked once at load
into an int8 matrix (code c stored as c, or c - 128 for 8-bit codes) with one scale and zero point
per output row, taken from the row's group. At run time each token's activations are quantized to
8 bits with their own scale (dynamic, per token, symmetric), multiplied by `torch._int_mm`
(int8 x int8 -> int32, oneDNN: VNNI/AMX on this CPU) and rescaled:

    y[t, r] = s_t * s_r * (sum_k xq[t, k] * c[r, k]  -  z_r * sum_k xq[t, k])  + bias[r]

which is exactly x_q @ (s_r * (c - z_r)).T: the weights see no second rounding. Per-token scales
make a sequence's result independent of what else is in its batch, which per-tensor dynamic
quantization (fbgemm `linear_dynamic`) is not. No FP32 copy of a quantized weight is kept;
sub-8-bit codes are a storage format (torch's 4-bit CPU kernels are slower than FP32 here).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from quantization.artifact import Artifact, read_artifact
from quantization.qtensor import QDATA, SCALE, ZERO_POINT, QuantizedWeight

_ARCHITECTURE = re.compile(r"^\w+For(SequenceClassification|TokenClassification|QuestionAnswering)$")


class Int8Linear(nn.Module):
    """A Linear layer running int8 x int8 -> int32 matmuls, per-row weight and per-token activation scales."""

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.bits = qweight.bits
        shift = 128 if qweight.bits == 8 else 0  # 8-bit codes [0, 255] -> int8 [-128, 127]
        self.register_buffer("weight_int8", (qweight.codes.to(torch.int16) - shift).to(torch.int8).contiguous())
        self.register_buffer("row_scale", qweight.row_scale().to(torch.float32))
        zero = qweight.row_zero_point().to(torch.int32) - shift
        self.register_buffer("row_zero", zero if bool(zero.any()) else None)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).contiguous())
        self.runtime_nbytes = sum(b.numel() * b.element_size() for b in self.buffers())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        token_scale = rows.abs().amax(1, keepdim=True).clamp_min_(1e-8) / 127.0
        xq = torch.round(rows / token_scale).to(torch.int8)
        acc = torch._int_mm(xq, self.weight_int8.t())
        if self.row_zero is not None:
            acc -= xq.sum(1, keepdim=True, dtype=torch.int32) * self.row_zero
        y = acc.to(torch.float32).mul_(token_scale * self.row_scale)
        if self.bias is not None:
            y += self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits} (int8 kernel)"


class QuantizedEmbedding(nn.Module):
    """An embedding table of unsigned codes with one (scale, zero point) per row, dequantized on lookup."""

    def __init__(self, qweight: QuantizedWeight, padding_idx: int | None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.padding_idx = padding_idx
        self.bits = qweight.bits
        self.register_buffer("codes", qweight.codes.contiguous())
        self.register_buffer("row_scale", qweight.row_scale().to(torch.float32))
        self.register_buffer("row_zero", qweight.row_zero_point().to(torch.float32))
        self.runtime_nbytes = self.codes.numel() + self.num_embeddings * 8

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        codes = self.codes[ids].to(torch.float32)
        return (codes - self.row_zero[ids].unsqueeze(-1)) * self.row_scale[ids].unsqueeze(-1)


@dataclass
class LoadedModel:
    """An inference-ready model with its tokenizer and what it costs."""

    model: nn.Module
    tokenizer: Any
    manifest: dict[str, Any]
    path: Path
    load_seconds: float
    packed_bytes: int
    runtime_bytes: int

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]["name"]

    @property
    def labels(self) -> list[str]:
        return self.manifest["labels"]


def _model_class(config: transformers.PretrainedConfig) -> type[nn.Module]:
    architectures = config.architectures or []
    if len(architectures) != 1 or not _ARCHITECTURE.match(architectures[0]):
        raise ValueError(f"unsupported architecture {architectures!r}; expected one *For<Task> class")
    return getattr(transformers, architectures[0])


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)


def _materialize_buffers(model: nn.Module) -> None:
    """Non-persistent index buffers (not stored in checkpoints) that were created on `meta`."""
    for module_name, module in model.named_modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if not buffer.is_meta:
                continue
            if name == "position_ids":
                value = torch.arange(buffer.shape[-1]).expand(buffer.shape).contiguous()
            elif name == "token_type_ids":
                value = torch.zeros(buffer.shape, dtype=buffer.dtype)
            else:
                raise ValueError(f"don't know how to build buffer {module_name}.{name}")
            module.register_buffer(name, value, persistent=False)


def build_model(artifact: Artifact) -> tuple[nn.Module, int]:
    """The inference model of an artifact and its runtime weight bytes."""
    config = transformers.AutoConfig.from_pretrained(artifact.path, local_files_only=True)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = _model_class(config)(config)
    tensors = dict(artifact.tensors)
    runtime_bytes = 0
    for entry in artifact.manifest["tensors"]:
        if entry["bits"] == 32:
            continue
        module_name = entry["module"]
        qweight = artifact.quantized_weight(entry)
        for suffix in (QDATA, SCALE, ZERO_POINT):
            del tensors[f"{entry['name']}.{suffix}"]
        original = model.get_submodule(module_name)
        if isinstance(original, nn.Embedding):
            replacement: nn.Module = QuantizedEmbedding(qweight, original.padding_idx)
        elif isinstance(original, nn.Linear):
            bias = tensors.pop(f"{module_name}.bias", None)
            replacement = Int8Linear(qweight, bias)
        else:
            raise ValueError(f"{module_name} is a {type(original).__name__}; only Linear/Embedding quantize")
        runtime_bytes += replacement.runtime_nbytes
        _set_submodule(model, module_name, replacement)
    result = model.load_state_dict(tensors, strict=False, assign=True)
    if result.unexpected_keys:
        raise ValueError(f"artifact has tensors the model does not: {result.unexpected_keys[:5]}")
    _materialize_buffers(model)
    still_meta = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if still_meta:
        raise ValueError(f"artifact lacks tensors the model needs: {still_meta[:5]}")
    runtime_bytes += sum(p.numel() * p.element_size() for p in model.parameters())
    model.eval()
    return model, runtime_bytes


def load_model(artifact_dir: Path) -> LoadedModel:
    """Verify, load and build an artifact's inference model with its tokenizer."""
    started = time.perf_counter()
    artifact = read_artifact(Path(artifact_dir))
    model, runtime_bytes = build_model(artifact)
    tokenizer = transformers.AutoTokenizer.from_pretrained(artifact.path, local_files_only=True)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        manifest=artifact.manifest,
        path=artifact.path,
        load_seconds=time.perf_counter() - started,
        packed_bytes=artifact.manifest["summary"]["total_packed_bytes"],
        runtime_bytes=runtime_bytes,
    )
