"""The encoder families served, and their task-model classes as every caller here can call them.

BERT, RoBERTa (XLM-RoBERTa with it), DistilBERT and ELECTRA checkpoints with a sequence-classification,
token-classification or question-answering head. Callers pass `input_ids`, `attention_mask` and `token_type_ids`
to every model alike; a family whose forward has no token types (DistilBERT) gets a subclass that accepts the
argument and ignores it (its tokenizer gives zeros), so module names, weights and outputs are the checkpoint's own.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import transformers
from torch import nn

# config.model_type -> the name a message shows
SUPPORTED_MODEL_TYPES = {
    "bert": "BERT",
    "roberta": "RoBERTa",
    "xlm-roberta": "XLM-RoBERTa",
    "distilbert": "DistilBERT",
    "electra": "ELECTRA",
}
HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")  # what every caller passes every model


class UnsupportedArchitectureError(ValueError):
    """A checkpoint whose encoder family or head the runtime does not serve; the message names what it does."""


def supported_architectures() -> str:
    return f"{', '.join(SUPPORTED_MODEL_TYPES.values())} encoders with a {', '.join(h[3:] for h in HEADS)} head"


def check_architecture(config: transformers.PretrainedConfig | dict[str, Any], head: str | None = None) -> str:
    """The checkpoint's one task-model class name; raises UnsupportedArchitectureError naming what is supported."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    model_type, architectures = get("model_type"), list(get("architectures") or [])
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not supported; supported: {supported_architectures()}"
        )
    wanted = (head,) if head else HEADS
    matching = [a for a in architectures if any(str(a).endswith(h) for h in wanted) and hasattr(transformers, a)]
    if len(matching) != 1:
        heads = " or ".join(h[3:] for h in wanted)
        raise UnsupportedArchitectureError(
            f"architectures {architectures} has no {heads} head; supported: {supported_architectures()}"
        )
    return matching[0]


@functools.cache
def model_class(architecture: str) -> type[nn.Module]:
    """The transformers class `architecture` names, taking `token_type_ids` whether or not the family has them."""
    cls = getattr(transformers, architecture)
    if "token_type_ids" in inspect.signature(cls.forward).parameters:
        return cls

    def forward(self: nn.Module, *args: Any, token_type_ids: Any = None, **kwargs: Any) -> Any:
        return cls.forward(self, *args, **kwargs)  # no segment embeddings in this family: token types mean nothing

    # The same name: transformers' save/load and the manifest see the checkpoint's own class.
    return type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__, "__doc__": cls.__doc__})


# Families that number positions from the padding index + 1 (transformers' `create_position_ids_from_input_ids`)
POSITIONS_AFTER_PADDING = {"roberta", "xlm-roberta"}


def longest_sequence(config: transformers.PretrainedConfig) -> int:
    """The most tokens a sequence may have: the position embeddings' rows, less those a family's numbering skips."""
    rows: int = config.max_position_embeddings
    if config.model_type in POSITIONS_AFTER_PADDING:
        return rows - config.pad_token_id - 1
    return rows
