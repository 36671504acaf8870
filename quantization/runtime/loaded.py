"""A model as the runtime hands it out (`LoadedModel`), and the inputs it is warmed up and checked on."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn


class BackendMismatchError(ValueError):
    """A built model's output on the check input differs from its reference beyond tolerance: refused."""


@dataclass
class LoadedModel:
    """An inference-ready model with its tokenizer and what it costs."""

    model: Any  # an nn.Module (eager, or compiled), or a CalledLikeHuggingFace (openvino, aot): all called alike
    tokenizer: Any
    manifest: dict[str, Any]
    path: Path
    load_seconds: float
    packed_bytes: int
    runtime_bytes: int
    backend: str = "eager"

    @property
    def config(self) -> transformers.PretrainedConfig:
        return self.model.config

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def task_spec(self) -> dict[str, Any] | None:
        """The task's kind and options as built (`TaskEntry.spec`); None in artifacts of a built-in
        task written before specs were recorded."""
        return self.manifest.get("task_spec")

    @property
    def precision(self) -> str:
        return self.manifest["precision"]["name"]

    @property
    def labels(self) -> list[str]:
        return self.manifest["labels"]


def random_inputs(
    batch: int, seq: int, vocab_size: int, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Unpadded model inputs of ordinary word pieces (ids past the special tokens) for warm-ups and benchmarks."""
    ids = torch.randint(min(1000, vocab_size // 2), vocab_size, (batch, seq), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


class OutputTuple(nn.Module):
    """A Hugging Face model as a function of its three input tensors to the tuple of its output tensors: the form
    exporters take (the openvino and aot backends, the bench's peers). A model that returns a tuple already (not a
    ModelOutput) is passed through."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> Any:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out if isinstance(out, tuple) else tuple(out.values())


class CalledLikeHuggingFace(abc.ABC):
    """A model compiled outside torch (the openvino and aot backends') called as the Hugging Face model it runs:
    keyword tensors in, with a missing mask attending everywhere and missing token types 0 as transformers has
    them, its ModelOutput out."""

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **_: Any,
    ) -> Any:
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        token_type_ids = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        return self.run(input_ids, attention_mask, token_type_ids)

    @abc.abstractmethod
    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> Any:
        """The model's output on all three inputs."""


CHECK_SHAPE = (2, 16)  # the fixed input a backend's model is checked on at load, against the reference


def check_inputs(vocab_size: int) -> dict[str, torch.Tensor]:
    """The fixed (seeded) input every backend's model is checked on at load time."""
    return random_inputs(*CHECK_SHAPE, vocab_size, torch.Generator().manual_seed(0))
