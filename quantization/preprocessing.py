"""PTQ1.61's quantization preprocessing (restorative LoRA), for any precision: the quantized model's weights Ŵ are
frozen, a low-rank correction B·A per quantized Linear is trained to restore the FP32 model's outputs, and the merged
Ŵ + B·A is the model the precision quantizes next. No data loading here: batches come in as an iterator.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from quantization.config import PreprocessingConfig, QATConfig
from quantization.qat import QATModel, TrainingLog, train_qat


class LowRankCorrection(nn.Module):
    """A weight parametrization: W ↦ W + B·A, B (out × rank) zero at the start, so training starts from Ŵ."""

    def __init__(self, rows: int, columns: int, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.randn(rank, columns, generator=generator) / columns**0.5)
        self.up = nn.Parameter(torch.zeros(rows, rank))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.up @ self.down


def restore(
    model: nn.Module,
    quantized_weights: Mapping[str, torch.Tensor],
    config: PreprocessingConfig,
    training: QATConfig,
    batches: Iterator[dict[str, torch.Tensor]],
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[nn.Module, TrainingLog]:
    """A copy of `model` with each named Linear's weight set to its quantized values (`quantized_weights`, float),
    low-rank corrections trained for `config.steps` against `model` as teacher (task loss and distillation as
    `training` mixes them), then merged into the weights. Only the corrections train."""
    student = copy.deepcopy(model)
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    modules = dict(student.named_modules())
    generator = torch.Generator().manual_seed(training.seed)
    for name, weight in quantized_weights.items():
        module = modules[name]
        module.weight.data = weight.to(module.weight.dtype).reshape(module.weight.shape).clone()
        rows, columns = module.weight.shape
        parametrize.register_parametrization(module, "weight", LowRankCorrection(rows, columns, config.rank, generator))
    recipe = QATConfig(
        steps=config.steps,
        batch_size=training.batch_size,
        learning_rate=config.learning_rate,
        warmup_fraction=training.warmup_fraction,
        max_length=training.max_length,
        distill_weight=training.distill_weight,
        seed=training.seed,
    )
    log = train_qat(QATModel(student, {}, nn.ModuleDict()), batches, recipe, teacher=model, on_step=on_step)
    for name in quantized_weights:
        parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=True)
    for parameter in student.parameters():
        parameter.requires_grad_(True)
    return student.eval(), log
