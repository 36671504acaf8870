"""Every use of transformers' internals in the runtime: the attention dispatch and BERT's self-attention module.

Pinned to `TESTED_TRANSFORMERS` in pyproject.toml. Where an internal is missing (another release), the runtime
runs the checkpoint's own modules unchanged: Q, K and V as three quantized Linear layers instead of one stacked
one, the same numbers a little slower, with the reason logged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import transformers
from torch import nn

try:
    from transformers.models.bert.modeling_bert import BertLayer as _BertLayer
except ImportError:  # another release: replacements of the layer are plain modules (their outputs then not recorded)
    _BertLayer = nn.Module  # type: ignore[assignment,misc]

TESTED_TRANSFORMERS = (5, 25)
SELF_ATTENTION_FIELDS = ("config", "num_attention_heads", "attention_head_size", "scaling", "is_causal", "is_decoder")


class TransformersChangedError(RuntimeError):
    """An internal of transformers is not what the runtime was written against."""


@functools.cache
def _bert_internals() -> tuple[Any, type[nn.Module], Callable[..., Any]]:
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.bert.modeling_bert import BertSelfAttention, eager_attention_forward
    except ImportError as exc:
        raise TransformersChangedError(f"transformers {transformers.__version__}: {exc}") from exc
    return ALL_ATTENTION_FUNCTIONS, BertSelfAttention, eager_attention_forward


def stacking_unavailable_reason() -> str | None:
    """Why BERT's self-attention cannot be replaced by the stacked form here, or None."""
    try:
        _bert_internals()
    except TransformersChangedError as exc:
        return str(exc)
    return None


def use_sdpa(config: transformers.PretrainedConfig) -> None:
    """Have models built from `config` run attention through torch's scaled_dot_product_attention."""
    config._attn_implementation = "sdpa"


def attention_function(config: transformers.PretrainedConfig) -> Callable[..., Any]:
    """The attention kernel `config` selects, as BERT's own self-attention calls it."""
    registry, _, eager = _bert_internals()
    return registry.get_interface(config._attn_implementation, eager)


def is_exact_gelu_intermediate(module: nn.Module) -> bool:
    """Whether `module` is exactly BERT's intermediate block (`dense`, then `intermediate_act_fn`) with the exact
    (erf) GELU as its activation, checked on values rather than by class (configs name GELUs in several ways)."""
    try:
        from transformers.models.bert.modeling_bert import BertIntermediate
    except ImportError:
        return False
    if type(module) is not BertIntermediate or not hasattr(module, "dense"):
        return False
    probe = torch.linspace(-6, 6, 97)
    try:
        return bool(torch.equal(module.intermediate_act_fn(probe), torch.nn.functional.gelu(probe)))
    except Exception:  # an activation that cannot run on a plain tensor is not GELU
        return False


def is_residual_layer_norm_output(module: nn.Module) -> bool:
    """Whether `module` is exactly one of BERT's output blocks (`dense`, `dropout`, then `LayerNorm` of the sum with
    the block's input), its LayerNorm over the last dimension with a weight and a bias."""
    try:
        from transformers.models.bert.modeling_bert import BertOutput, BertSelfOutput
    except ImportError:
        return False
    if type(module) not in (BertOutput, BertSelfOutput) or not hasattr(module, "dense"):
        return False
    norm = getattr(module, "LayerNorm", None)
    return (
        type(norm) is nn.LayerNorm
        and len(norm.normalized_shape) == 1
        and norm.weight is not None
        and norm.bias is not None
    )


class RecordedEncoderLayer(_BertLayer):
    """The base of a module that replaces BERT's encoder layer. transformers records `output_hidden_states` by hooking
    every BertLayer instance (the model's `_can_record_outputs`), so a replacement must be one to be recorded. This
    base builds none of BertLayer's parts and sets only what an encoder layer is (no decoder, no cross-attention, the
    feed-forward block unchunked); the subclass brings its parts and its forward."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.is_decoder = False
        self.add_cross_attention = False
        self.chunk_size_feed_forward = 0
        self.seq_len_dim = 1


def is_encoder(module: nn.Module) -> bool:
    """Whether `module` is exactly BERT's encoder (its layers in `layer`, run one after the other)."""
    try:
        from transformers.models.bert.modeling_bert import BertEncoder
    except ImportError:
        return False
    return type(module) is BertEncoder


def is_encoder_layer(module: nn.Module) -> bool:
    """Whether `module` is exactly BERT's layer, as an encoder's (no cross-attention, the feed-forward block unchunked)
    with exactly BERT's attention block (its self-attention, then its output block on the result and the input)."""
    try:
        from transformers.models.bert.modeling_bert import BertAttention, BertLayer
    except ImportError:
        return False
    return (
        type(module) is BertLayer
        and type(getattr(module, "attention", None)) is BertAttention
        and not getattr(module, "is_decoder", True)
        and not getattr(module, "add_cross_attention", True)
        and getattr(module, "chunk_size_feed_forward", None) == 0
        and not getattr(module.attention, "is_cross_attention", True)
    )


def is_encoder_self_attention(module: nn.Module) -> bool:
    """Whether `module` is exactly BERT's self-attention (a subclass may compute something else), in an encoder."""
    _, self_attention, _ = _bert_internals()
    return type(module) is self_attention and not module.is_decoder


def self_attention_fields(module: nn.Module) -> dict[str, Any]:
    """What a replacement of BERT's self-attention needs of the original to compute the same thing."""
    missing = [name for name in SELF_ATTENTION_FIELDS if not hasattr(module, name)]
    if missing:
        raise TransformersChangedError(f"transformers {transformers.__version__}'s BertSelfAttention lacks {missing}")
    return {name: getattr(module, name) for name in SELF_ATTENTION_FIELDS} | {
        "layer_idx": getattr(module, "layer_idx", None)
    }
