"""Quantization-aware fine-tuning (Q8BERT, Q-BERT §3.3): fake-quantized weights and activations in the forward
pass, gradients passed straight through (STE), then packing with the same quantizer.

Weights are fake-quantized by a `torch.nn.utils.parametrize` parametrization on each planned module, so module
names, the state dict and the optimizer's parameters stay the FP32 model's; removing the parametrizations
leaves the trained FP32 weights, which `quantize_model` packs with the very functions (`choose_qparams`,
`quantize`, `dequantize` of `primitives`) the forward pass used: no second rounding after training.

Activations: every planned Linear's input is rounded to 8 bits the way `runtime.Int8Linear` does at inference
(per token, symmetric), or, with `activation_ranges="ema"`, Q8BERT-style to one range per Linear tracked by
an exponential moving average. Nothing here reads files; batches come in as an iterator.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from quantization.config import PrecisionConfig, QATConfig, WeightQuantConfig
from quantization.feature_tensors import model_inputs
from quantization.plan import build_plan, needs_calibration
from quantization.primitives import (
    ACTIVATION_LEVELS,
    choose_qparams,
    dequantize,
    group_offsets,
    quantize,
    resolve_num_groups,
    rows_of_groups,
    token_scales,
)

logger = logging.getLogger(__name__)


def _straight_through(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """x_hat forward, identity backward."""
    return x + (x_hat - x).detach()


@dataclass(frozen=True)
class QuantNoise:
    """Quant-Noise (Fan et al., 2020): which weights a training forward pass quantizes. Each unit (a block of
    `block` consecutive weights in a row, or the whole matrix) is quantized with probability `rate`, independently
    and afresh every pass (torch's generator, seeded by the training run); the others pass at full precision."""

    rate: float
    unit: str = "block"
    block: int = 8

    def mask(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """True where the weight is quantized in this pass."""
        if self.unit == "layer":
            return torch.full(shape, bool(torch.rand(()) < self.rate), device=device)
        rows, columns = shape[0], math.prod(shape[1:])
        blocks = torch.rand(rows, math.ceil(columns / self.block), device=device) < self.rate
        return blocks.repeat_interleave(self.block, dim=1)[:, :columns].reshape(shape)


class WeightFakeQuant(nn.Module):
    """Parametrization: the weight as its quantized value, straight-through gradient.

    Each group's (scale, zero point) is chosen by `choose_qparams` (the packed path's own choice) on the current
    weights, again every `refresh_every` training calls (and on the first call); codes always follow the weights.
    With `noise`, a training pass quantizes only the units its mask picks (Quant-Noise); evaluation quantizes all.
    """

    def __init__(
        self,
        config: WeightQuantConfig,
        rows: int,
        head_rows: int | None,
        refresh_every: int,
        noise: QuantNoise | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.noise = noise
        self.refresh_every = refresh_every
        self.offsets = group_offsets(rows, resolve_num_groups(config, rows), head_rows)
        self.row_group: torch.Tensor
        self.register_buffer("row_group", rows_of_groups(self.offsets), persistent=False)
        self.row_scale: torch.Tensor | None = None
        self.row_zero: torch.Tensor | None = None
        self.calls = 0

    @torch.no_grad()
    def refresh(self, weight: torch.Tensor) -> None:
        scale, zero = choose_qparams(
            weight, self.offsets, self.config.bits, self.config.symmetric, self.config.range_method
        )
        self.row_scale, self.row_zero = scale[self.row_group], zero[self.row_group]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.row_scale is None or (self.training and self.calls % self.refresh_every == 0):
            self.refresh(weight)
        if self.training:
            self.calls += 1
        assert self.row_scale is not None
        assert self.row_zero is not None
        with torch.no_grad():
            codes = quantize(weight, self.row_scale, self.row_zero, self.config.bits)
            weight_hat = dequantize(codes, self.row_scale, self.row_zero)
            if self.training and self.noise is not None:
                weight_hat = torch.where(self.noise.mask(weight.shape, weight.device), weight_hat, weight)
        return _straight_through(weight, weight_hat)


class ActivationFakeQuant(nn.Module):
    """8-bit symmetric rounding of a Linear's input: per token (as the runtime) or one EMA range (Q8BERT)."""

    def __init__(self, ranges: str, ema_decay: float) -> None:
        super().__init__()
        self.ranges = ranges
        self.ema_decay = ema_decay
        self.running_max: torch.Tensor
        self.register_buffer("running_max", torch.zeros(()))
        self.seen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ranges == "dynamic":
            scale = token_scales(x.detach())
        else:
            if self.training:
                current = x.detach().abs().max()
                decay = self.ema_decay if self.seen else 0.0
                self.running_max.mul_(decay).add_((1 - decay) * current)
                self.seen = True
            scale = self.running_max.clamp_min(1e-8) / ACTIVATION_LEVELS
        x_hat = torch.round(x.detach() / scale).clamp_(-ACTIVATION_LEVELS, ACTIVATION_LEVELS) * scale
        return _straight_through(x, x_hat)


@dataclass
class QATModel:
    """A model prepared for QAT: its fake quantizers, removable with `strip`."""

    model: nn.Module
    weight_quantizers: dict[str, WeightFakeQuant]
    activation_quantizers: nn.ModuleDict
    hooks: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
        self.activation_quantizers.train(mode)

    def strip(self) -> nn.Module:
        """The model with plain FP32 weights (the trained values) and no hooks: ready for `quantize_model`."""
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
        modules = dict(self.model.named_modules())
        for name in self.weight_quantizers:
            parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=False)
        self.weight_quantizers.clear()
        return self.model.eval()


def prepare_qat(model: nn.Module, precision: PrecisionConfig, config: QATConfig) -> QATModel:
    """Fake quantizers on every weight the precision's plan names (checked strictly), and on the inputs of the
    quantized encoder Linears; the model is modified in place."""
    plan = build_plan(model, precision)
    if not plan:
        raise ValueError(f"precision {precision.name!r} quantizes nothing: there is nothing to train for")
    if needs_calibration(plan):
        raise ValueError(f"precision {precision.name!r}: QAT simulates round-to-nearest; GPTQ rounding is PTQ only")
    modules = dict(model.named_modules())
    prepared = QATModel(model, {}, nn.ModuleDict())
    noise = QuantNoise(config.noise_rate, config.noise_unit, config.noise_block) if config.quant_noise else None
    for name, planned in plan.items():
        module = modules[name]
        quantizer = WeightFakeQuant(
            planned.config, module.weight.shape[0], planned.target.head_rows, config.qparams_every, noise
        )
        parametrize.register_parametrization(module, "weight", quantizer)
        prepared.weight_quantizers[name] = quantizer
        if isinstance(module, nn.Linear):
            fake_input = ActivationFakeQuant(config.activation_ranges, config.ema_decay)
            prepared.activation_quantizers[name.replace(".", "/")] = fake_input
            prepared.hooks.append(module.register_forward_pre_hook(lambda _m, args, q=fake_input: (q(args[0]),)))
    return prepared


def distillation_loss(student: object, teacher: object, attention_mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) of every logits output, averaged over sequences (and over real tokens per token)."""
    mask = attention_mask.to(torch.float32)
    losses = []
    for key in ("logits", "start_logits", "end_logits"):
        s, t = getattr(student, key, None), getattr(teacher, key, None)
        if s is None or t is None:
            continue
        if key != "logits":  # distributions over positions: padding is not a position
            s = s.masked_fill(mask == 0, -1e4)
            t = t.masked_fill(mask == 0, -1e4)
        kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
        losses.append((kl * mask).sum() / mask.sum() if kl.dim() == 2 else kl.mean())
    if not losses:
        raise ValueError("the model's outputs have no logits to distil")
    return torch.stack(losses).mean()


def hidden_state_loss(
    student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], attention_mask: torch.Tensor
) -> torch.Tensor:
    """Mean squared error between the two models' hidden states after every block (the embeddings' output, the
    first entry, is left out), over real tokens and the hidden dimension, averaged over blocks."""
    if len(student) != len(teacher) or len(student) < 2:
        raise ValueError(f"hidden states of {len(student)} and {len(teacher)} layers cannot be compared")
    mask = attention_mask.to(torch.float32).unsqueeze(-1)
    width = student[-1].shape[-1]
    pairs = zip(student[1:], teacher[1:], strict=True)
    errors = [(((s - t) ** 2) * mask).sum() / (mask.sum() * width) for s, t in pairs]
    return torch.stack(errors).mean()


@dataclass(frozen=True)
class TrainingLog:
    steps: int
    seconds: float
    first_loss: float  # mean over the first 5 % of steps
    final_loss: float  # mean over the last 5 %
    learning_rate: float


def _linear_schedule(config: QATConfig) -> Callable[[int], float]:
    warmup = max(1, math.ceil(config.warmup_fraction * config.steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (config.steps - step) / max(1, config.steps - warmup))

    return factor


def train_qat(
    prepared: QATModel,
    batches: Iterator[dict[str, torch.Tensor]],
    config: QATConfig,
    teacher: nn.Module | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainingLog:
    """`config.steps` AdamW steps (linear warm-up and decay, gradient norm clipped at 1) on the task loss the model
    computes from the batch's targets, mixed with distillation from `teacher` by `config.distill_weight`, plus its
    hidden states' error after every block times `config.hidden_distill_weight`."""
    torch.manual_seed(config.seed)  # dropout masks
    model = prepared.model
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_schedule(config))
    wants_teacher = config.distill_weight > 0 or config.hidden_distill_weight > 0
    distil = teacher if teacher is not None and wants_teacher else None
    hidden = distil is not None and config.hidden_distill_weight > 0
    if distil is not None:
        distil.eval()
    prepared.train()
    losses = []
    started = time.perf_counter()
    for step in range(config.steps):
        batch = next(batches)
        outputs = model(**batch, output_hidden_states=True) if hidden else model(**batch)
        loss = outputs.loss
        if distil is not None:
            with torch.no_grad():
                reference = distil(**model_inputs(batch), output_hidden_states=hidden)
            if config.distill_weight > 0:
                kd = distillation_loss(outputs, reference, batch["attention_mask"])
                loss = (1 - config.distill_weight) * loss + config.distill_weight * kd
            if hidden:
                states = hidden_state_loss(outputs.hidden_states, reference.hidden_states, batch["attention_mask"])
                loss = loss + config.hidden_distill_weight * states
        if not torch.isfinite(loss):
            raise FloatingPointError(f"QAT diverged at step {step}: loss {float(loss)}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if on_step:
            on_step(step + 1, losses[-1])
    prepared.train(False)
    edge = max(1, len(losses) // 20)
    return TrainingLog(
        steps=config.steps,
        seconds=round(time.perf_counter() - started, 1),
        first_loss=sum(losses[:edge]) / edge,
        final_loss=sum(losses[-edge:]) / edge,
        learning_rate=config.learning_rate,
    )


def training_record(config: QATConfig, log: TrainingLog, split: str, examples: int) -> dict[str, object]:
    """What an artifact's manifest says of its training (`qat` section)."""
    return {"config": dataclasses.asdict(config), "split": split, "examples": examples, **dataclasses.asdict(log)}
