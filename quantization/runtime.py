"""Inference models built from artifacts, running real int8 kernels.

Quantized Linear layers become `Int8Linear`: the stored 2/3/4/8-bit codes are unpacked once at load
into an fbgemm per-channel int8 matrix (one scale and zero point per output row, taken from the
row's group) and executed with `torch.ops.quantized.linear_dynamic`, which quantizes activations to
8 bits per tensor at run time. Because a code c with zero point z is stored as the int8 value c
(c - 128 for 8-bit codes), the kernel computes exactly scale * (c - z): no second rounding. No FP32
copy of a quantized weight is kept. Sub-8-bit codes are a storage format: on CPU, int8 kernels are
the fastest integer path (torch's 4-bit CPU kernels are slower than FP32 here).
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from quantization.artifact import Artifact, read_artifact
from quantization.primitives import group_offsets
from quantization.qtensor import QuantizedWeight

_ARCHITECTURE = re.compile(r"^\w+For(SequenceClassification|TokenClassification|QuestionAnswering)$")


@cache
def cpu_has_vnni() -> bool:
    """Whether int8 dot products accumulate without int16 saturation (AVX512-VNNI / AVX-VNNI)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


class Int8Linear(nn.Module):
    """A Linear layer running fbgemm int8 x int8 -> int32 matmuls with per-row weight scales."""

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.bits = qweight.bits
        shift = 128 if qweight.bits == 8 else 0  # 8-bit codes [0, 255] -> int8 [-128, 127]
        int_repr = (qweight.codes.to(torch.int16) - shift).to(torch.int8)
        zero = qweight.row_zero_point().to(torch.int64) - shift
        with warnings.catch_warnings():
            # The quantized-tensor constructors are deprecated but remain fbgemm's only entry point.
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            weight = torch._make_per_channel_quantized_tensor(int_repr, qweight.row_scale().double(), zero, 0)
        bias = None if bias is None else bias.detach().to(torch.float32).contiguous()
        self._packed = torch.ops.quantized.linear_prepack(weight, bias)
        # Without VNNI, fbgemm's u8 x s8 pairs saturate in int16 for full-range 8-bit weights:
        # then activations use 7 bits, as torch's own dynamic quantization does.
        self.reduce_range = qweight.bits == 8 and not cpu_has_vnni()
        self.runtime_nbytes = (
            self.out_features * self.in_features + self.out_features * 16 + (0 if bias is None else bias.numel() * 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed, self.reduce_range)

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
        module_name, rows = entry["module"], entry["shape"][0]
        offsets = group_offsets(rows, entry["num_groups"], entry.get("head_rows"))
        qweight = QuantizedWeight.from_storage(tensors, entry["name"], tuple(entry["shape"]), entry["bits"], offsets)
        for suffix in ("qdata", "scale", "zero_point"):
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
