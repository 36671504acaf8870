"""BERT's encoder layer as one call of our kernels (`encoder_layer`), where every part of it already runs on them:
the stacked Q/K/V projection and our attention, the attention block's and the output block's GEMM with the residual
LayerNorm as epilogue, and the intermediate GEMM with GELU. The same values as those parts called one by one (the
kernel composes the same cores); one call instead of five, and a batch whose sequences split evenly between the
threads runs each sequence through the whole layer on one thread, with no wait between the steps."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

from quantization.runtime.modules import (
    ATTENTION_PRODUCT_CODES,
    FusedResidualLayerNormOutput,
    GeluFusedIntermediate,
    StackedQKVSelfAttention,
    fused_attention_applies,
    set_submodule,
)
from quantization.runtime.packed_linear import PackedLinear
from quantization.runtime.transformers_internals import RecordedEncoderLayer, is_encoder, is_encoder_layer


def kernel_takes(
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    encoder_hidden_states: torch.Tensor | None,
    cache: Any,
    kwargs: dict[str, Any],
) -> bool:
    """Whether `encoder_layers` computes what BERT's layers would for these inputs: float32 [batch, seq, width]
    hidden states, an encoder's mask (`fused_attention_applies`), no cross-attention, no cache."""
    return (
        hidden_states.dim() == 3
        and hidden_states.dtype == torch.float32
        and encoder_hidden_states is None
        and cache is None
        and fused_attention_applies(attention_mask, kwargs)
    )


class FusedEncoderLayer(RecordedEncoderLayer):
    """An encoder layer of BERT (`is_encoder_layer`) whose parts are our fused modules, run as one kernel call. Its
    submodules keep the original layer's names and tensors; inputs the kernel does not take (another mask type,
    attention weights asked for) run through them as BERT's layer would. Its outputs are recorded as a BERT layer's
    (`output_hidden_states`)."""

    def __init__(
        self, attention: nn.Module, intermediate: GeluFusedIntermediate, output: FusedResidualLayerNormOutput
    ) -> None:
        super().__init__()
        # BERT's attention block: `self` our stacked self-attention, `output` our fused output block
        self.attention = attention  # type: ignore[assignment]  # BertLayer's own parts are the unfused classes
        self.intermediate = intermediate  # type: ignore[assignment]
        self.output = output  # type: ignore[assignment]

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if kernel_takes(hidden_states, attention_mask, encoder_hidden_states, cache, kwargs):
            return run_fused_layers([self], hidden_states, attention_mask)
        return self.step_by_step(hidden_states, attention_mask, cache=cache, **kwargs)

    def step_by_step(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *_: Any, **kwargs: Any
    ) -> torch.Tensor:
        """The layer's parts called one by one, as BERT's encoder layer calls them."""
        kwargs.pop("encoder_hidden_states", None)
        kwargs.pop("encoder_attention_mask", None)
        attention_output, _ = self.attention(hidden_states, attention_mask, **kwargs)
        return self.output(self.intermediate(attention_output), attention_output)

    def kernel_arguments(self) -> tuple[list[torch.Tensor], list[int], list[int], list[torch.Tensor], list[float]]:
        """This layer's part of `encoder_layers`' arguments: its Linear layers' tensors, bits and rows, its
        LayerNorms' tensors and eps."""
        attention_output = cast(FusedResidualLayerNormOutput, self.attention.output)
        intermediate = cast(GeluFusedIntermediate, self.intermediate)
        output = cast(FusedResidualLayerNormOutput, self.output)
        qkv = cast(PackedLinear, self._self_attention().qkv)
        weights = [
            linear.kernel_weights() for linear in (qkv, attention_output.dense, intermediate.dense, output.dense)
        ]
        return (
            [tensor for codes, _, _, scale, zero, bias in weights for tensor in (codes, scale, zero, bias)],
            [bits for _, bits, *_ in weights],
            [rows for _, _, rows, *_ in weights],
            [attention_output.weight, attention_output.bias, output.weight, output.bias],
            [attention_output.eps, output.eps],
        )

    def attention_arguments(self) -> tuple[int, float, int]:
        """Heads, scale and the products' code, as the attention kernel takes them."""
        self_attention = self._self_attention()
        products = ATTENTION_PRODUCT_CODES[self_attention.products]
        return self_attention.num_attention_heads, self_attention.scaling, products

    def _self_attention(self) -> StackedQKVSelfAttention:
        return cast(StackedQKVSelfAttention, self.attention.self)


def run_fused_layers(
    layers: list[FusedEncoderLayer], hidden_states: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """`layers` (consecutive, one attention setting) on `hidden_states` in one call of `encoder_layers`."""
    linears: list[torch.Tensor] = []
    bits: list[int] = []
    rows: list[int] = []
    norms: list[torch.Tensor] = []
    eps: list[float] = []
    for layer in layers:
        layer_linears, layer_bits, layer_rows, layer_norms, layer_eps = layer.kernel_arguments()
        linears += layer_linears
        bits += layer_bits
        rows += layer_rows
        norms += layer_norms
        eps += layer_eps
    heads, scale, products = layers[0].attention_arguments()
    return torch.ops.qbert_kernels.encoder_layers(
        hidden_states, attention_mask, linears, bits, rows, norms, eps, heads, scale, products
    )


class FusedEncoder(nn.Module):
    """BERT's encoder whose every layer is a `FusedEncoderLayer` (one attention setting), run as one kernel call:
    the same values as its layers called one by one, with no wait between the layers where the batch splits evenly
    between the threads. Where its layers' outputs are being recorded (forward hooks: `output_hidden_states`), or an
    input is one the kernel does not take, its layers run one by one, as BERT's encoder runs them."""

    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layer = layers

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        layers = [cast(FusedEncoderLayer, layer) for layer in self.layer]
        if (
            kernel_takes(hidden_states, attention_mask, encoder_hidden_states, cache, kwargs)
            and not any(layer._forward_hooks or layer._forward_pre_hooks for layer in layers)
            and len({layer.attention_arguments() for layer in layers}) == 1
        ):
            return BaseModelOutputWithPastAndCrossAttentions(
                last_hidden_state=run_fused_layers(layers, hidden_states, attention_mask)
            )
        return self.step_by_step(hidden_states, attention_mask, cache=cache, use_cache=use_cache, **kwargs)

    def step_by_step(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *_: Any,
        cache: Any = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """The layers called one by one, as BERT's encoder calls them."""
        kwargs.pop("encoder_hidden_states", None)
        encoder_attention_mask = kwargs.pop("encoder_attention_mask", None)
        for layer in self.layer:
            hidden_states = layer(
                hidden_states,
                attention_mask,
                None,
                encoder_attention_mask=encoder_attention_mask,
                cache=cache,
                **kwargs,
            )
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states, cache=cache if use_cache else None
        )


def fusable_encoder_layer(module: nn.Module) -> bool:
    """Whether `module` is a BERT encoder layer whose every part runs on our kernels (the other fusions done)."""
    if not is_encoder_layer(module):
        return False
    attention = cast(nn.Module, module.attention)
    self_attention = attention.self
    return (
        isinstance(self_attention, StackedQKVSelfAttention)
        and isinstance(self_attention.qkv, PackedLinear)
        and isinstance(attention.output, FusedResidualLayerNormOutput)
        and isinstance(module.intermediate, GeluFusedIntermediate)
        and isinstance(module.output, FusedResidualLayerNormOutput)
    )


def fuse_encoder_layers(model: nn.Module) -> None:
    """Replace every BERT encoder layer that `fusable_encoder_layer` accepts by `FusedEncoderLayer`, then every BERT
    encoder whose layers are all fused, with one attention setting, by `FusedEncoder`."""
    for name, module in list(model.named_modules()):
        if fusable_encoder_layer(module):
            parts = (module.attention, module.intermediate, module.output)
            set_submodule(model, name, FusedEncoderLayer(*cast(tuple[nn.Module, Any, Any], parts)))
    for name, module in list(model.named_modules()):
        layers = getattr(module, "layer", None)
        if (
            is_encoder(module)
            and isinstance(layers, nn.ModuleList)
            and len(layers) > 0
            and all(isinstance(layer, FusedEncoderLayer) for layer in layers)
        ):
            set_submodule(model, name, FusedEncoder(layers))
