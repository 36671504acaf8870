"""Discovering what to quantize from the model itself: encoder blocks, their Linear layers and
their roles, and the embeddings. Nothing here assumes a layer count or a hidden size."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from torch import nn


class Role(StrEnum):
    ATTENTION_QKV = "attention_qkv"  # output rows are attention heads
    ATTENTION_OUT = "attention_out"
    FFN_IN = "ffn_in"
    FFN_OUT = "ffn_out"
    OTHER = "other"
    EMBEDDING = "embedding"


@dataclass(frozen=True)
class QuantTarget:
    """One quantizable weight: the owning module's qualified name and how its rows are grouped."""

    name: str
    role: Role
    block: str | None  # the encoder block it belongs to (None for embeddings)
    head_rows: int | None  # rows per attention head for Q/K/V, else None


@dataclass(frozen=True)
class EncoderBlock:
    name: str
    module: nn.Module


def encoder_blocks(model: nn.Module) -> list[EncoderBlock]:
    """The encoder's repeated blocks, found as the ModuleList named `*encoder.layer(s)` (BERT, RoBERTa, ELECTRA) or
    `*transformer.layer` (DistilBERT)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 2)[-2:] in (
            ["encoder", "layer"],
            ["encoder", "layers"],
            ["transformer", "layer"],
        ):
            return [EncoderBlock(f"{name}.{i}", block) for i, block in enumerate(module)]
    raise ValueError(
        f"{type(model).__name__} has no `encoder.layer` or `transformer.layer` ModuleList: not a BERT-family model"
    )


def _role(local_name: str) -> Role:
    leaf = local_name.rsplit(".", 1)[-1]
    if leaf in ("query", "key", "value", "q_lin", "k_lin", "v_lin"):  # BERT's names, then DistilBERT's
        return Role.ATTENTION_QKV
    if local_name.endswith(("attention.output.dense", "attention.out_lin")):
        return Role.ATTENTION_OUT
    if local_name.endswith(("intermediate.dense", "ffn.lin1")):
        return Role.FFN_IN
    if local_name.endswith(("output.dense", "ffn.lin2")):
        return Role.FFN_OUT
    return Role.OTHER


def _head_rows(model: nn.Module) -> int:
    config: Any = model.config
    return int(config.hidden_size // config.num_attention_heads)


def linear_targets(model: nn.Module) -> list[QuantTarget]:
    """Every Linear inside the encoder blocks, in model order."""
    head_rows = _head_rows(model)
    targets = []
    for block in encoder_blocks(model):
        for local_name, module in block.module.named_modules():
            if isinstance(module, nn.Linear):
                role = _role(local_name)
                rows = head_rows if role is Role.ATTENTION_QKV else None
                targets.append(QuantTarget(f"{block.name}.{local_name}", role, block.name, rows))
    return targets


def embedding_targets(model: nn.Module) -> list[QuantTarget]:
    """The word, position and token-type embeddings (every nn.Embedding outside the encoder)."""
    return [
        QuantTarget(name, Role.EMBEDDING, None, None)
        for name, module in model.named_modules()
        if isinstance(module, nn.Embedding)
    ]
