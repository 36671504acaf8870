"""An artifact's inference model: quantized Linear layers and embeddings in place of the checkpoint's, packed."""

from __future__ import annotations

import typing

import torch
import transformers
from torch import nn

from quantization.architectures import check_architecture, model_class
from quantization.artifact import Artifact
from quantization.binarized import BinarizedWeight
from quantization.qtensor import QuantizedWeight
from quantization.runtime.binarized_linear import BinarizedLinear, LinearFactory
from quantization.runtime.fused_encoder_layer import fuse_encoder_layers
from quantization.runtime.int8_linear import Int8Linear
from quantization.runtime.modules import (
    QuantizedEmbedding,
    fuse_intermediate_gelu,
    fuse_residual_layer_norm,
    set_submodule,
    stack_attention_projections,
)
from quantization.runtime.packed_linear import PackedLinear
from quantization.runtime.transformers_internals import use_sdpa
from quantization.system import release_free_heap


def _model_class(config: transformers.PretrainedConfig) -> type[nn.Module]:
    return model_class(check_architecture(config))


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


def build_model(
    artifact: Artifact, stack_qkv: bool = True, linear_factory: LinearFactory | None = None
) -> tuple[nn.Module, int]:
    """The inference model of an artifact and its runtime weight bytes.

    `stack_qkv`: run each attention block's quantized Q, K and V as one matmul (same results, faster).
    `linear_factory(qweight, bias)`: the module a quantized Linear becomes (default `Int8Linear`); it reports its
    resident bytes as `runtime_nbytes`.
    """
    linear_factory = linear_factory or Int8Linear.from_quantized
    config = transformers.AutoConfig.from_pretrained(artifact.path, local_files_only=True)
    use_sdpa(config)
    with torch.device("meta"):
        model = _model_class(config)(config)
    tensors = dict(artifact.tensors)
    for entry in artifact.manifest["tensors"]:
        if entry["bits"] == 32:
            continue
        module_name = entry["module"]
        qweight = artifact.quantized_weight(entry)
        for name in artifact.stored_names(entry):
            del tensors[name]
        original = model.get_submodule(module_name)
        if isinstance(original, nn.Embedding) and isinstance(qweight, QuantizedWeight):
            replacement: nn.Module = QuantizedEmbedding(qweight, original.padding_idx)
        elif isinstance(original, nn.Linear) and isinstance(qweight, BinarizedWeight):
            replacement = BinarizedLinear(qweight, tensors.pop(f"{module_name}.bias", None), linear_factory)
        elif isinstance(original, nn.Linear) and isinstance(qweight, QuantizedWeight):
            bias = tensors.pop(f"{module_name}.bias", None)
            replacement = linear_factory(qweight, bias)
        else:
            raise ValueError(
                f"{module_name} is a {type(original).__name__} with a {type(qweight).__name__}; only Linear and "
                "Embedding quantize, and only Linear binarizes"
            )
        set_submodule(model, module_name, replacement)
    # Copies, so that no model tensor keeps the memory-mapped weights file (and its pages) alive.
    result = model.load_state_dict({k: v.clone() for k, v in tensors.items()}, strict=False, assign=True)
    if result.unexpected_keys:
        raise ValueError(f"artifact has tensors the model does not: {result.unexpected_keys[:5]}")
    _materialize_buffers(model)
    still_meta = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if still_meta:
        raise ValueError(f"artifact lacks tensors the model needs: {still_meta[:5]}")
    if stack_qkv:
        stack_attention_projections(model)
    fuse_intermediate_gelu(model)
    fuse_residual_layer_norm(model)
    fuse_encoder_layers(model)
    for module in model.modules():
        if isinstance(module, (Int8Linear, PackedLinear)):
            module.pack()
    # after packing: what each quantized module holds (packed codes, row parameters), and the float parameters
    runtime_bytes = sum(
        typing.cast(int, module.runtime_nbytes) for module in model.modules() if hasattr(module, "runtime_nbytes")
    )
    runtime_bytes += sum(p.numel() * p.element_size() for p in model.parameters())
    model.eval()
    release_free_heap()  # the load's freed temporaries, so that RSS is the model's size, not its load's peak
    return model, runtime_bytes
