"""What the backend tests share: tiny artifacts (every width, a mixed plan) and the float64 formula they must
compute."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from quantization.artifact import read_artifact
from quantization.binarized import BinarizedWeight
from quantization.build import build_artifact, load_checkpoint
from quantization.catalog import load_catalog
from tests.conftest import tiny_entry, write_tiny_data

CATALOG = load_catalog()
LAYER = "bert.encoder.layer.{}.{}"
# A mixed plan over every width: Q/K/V/out/FFN of block 0 and block 1 at 2, 3, 4 and 8 bits.
MIXED = {
    LAYER.format(0, "attention.self.query"): 2,
    LAYER.format(0, "attention.self.key"): 3,
    LAYER.format(0, "attention.self.value"): 4,
    LAYER.format(0, "attention.output.dense"): 8,
    LAYER.format(0, "intermediate.dense"): 3,
    LAYER.format(1, "attention.self.query"): 8,
    LAYER.format(1, "intermediate.dense"): 2,
    LAYER.format(1, "output.dense"): 4,
}
# (task, precision, layer_bits): every width alone, a mixed plan, and the token and span heads
EVERY_WIDTH_CASES = [
    ("sst2", "w8", None),
    ("sst2", "w4g128", None),
    ("sst2", "w3g128", None),
    ("sst2", "w2g128", None),
    ("sst2", "w4g128", MIXED),
    ("ner", "w3g128", None),
    ("qa", "w2g128", MIXED),
]


def build_tiny(tmp_path: Path, checkpoint_dir: Path, task: str, precision: str, layer_bits: dict | None = None) -> Path:
    config = CATALOG.precision_for(task, precision)
    if layer_bits:
        config = dataclasses.replace(config, name="mixed", layer_bits=layer_bits)
    out = tmp_path / task / config.name
    data = write_tiny_data(tmp_path / "data")
    build_artifact(load_checkpoint(str(checkpoint_dir), task), tiny_entry(task, checkpoint_dir, data), config, out)
    return out


def float64_reference(checkpoint_dir: Path, task: str, artifact_dir: Path) -> torch.nn.Module:
    """The FP32 checkpoint in float64 with every quantized tensor (Linear weights, embeddings) set to s·(c − z),
    and each quantized Linear's input rounded per token to 8 bits, x_q·s_t with s_t = max|x| / 127."""
    reference = load_checkpoint(str(checkpoint_dir), task).model
    artifact = read_artifact(artifact_dir)

    def quantize_per_token(_module, args):
        (x,) = args
        scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127
        return (torch.round(x / scale) * scale,)

    for entry in artifact.manifest["tensors"]:
        if entry["bits"] != 32:
            module = reference.get_submodule(entry["module"])
            weight = artifact.quantized_weight(entry)
            module.weight.data = weight.dequantize()
            if isinstance(weight, BinarizedWeight):
                module.register_forward_hook(binarized_formula(weight))
            elif isinstance(module, torch.nn.Linear):
                module.register_forward_pre_hook(quantize_per_token)
    return reference.double()


def _rounded_per_token(x: torch.Tensor) -> torch.Tensor:
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127
    return torch.round(x / scale) * scale


def binarized_formula(weight: BinarizedWeight):  # noqa: ANN201 — a forward hook
    """A PTQ1.61 layer's output in float64 as `BinarizedLinear` defines it: the salient inputs and the column-scaled
    binarized inputs each rounded per token, times the salient weights and 2·row_scale·b, plus the row offset times
    the binarized inputs' sum, plus the bias."""
    rest = weight.rest
    column = rest.column_scale.double() if rest.column_scale is not None else 1.0
    mean = rest.row_mean.double() if rest.row_mean is not None else 0.0
    codes = (rest.signs.double() + 1) / 2 * (2 * rest.row_scale.double()[:, None])
    salient = weight.salient.dequantize().double() if weight.salient is not None else None

    def hook(module: torch.nn.Linear, args: tuple[torch.Tensor], _output: torch.Tensor) -> torch.Tensor:
        x = args[0].double()
        binarized = x[..., weight.rest_index] * column
        y = _rounded_per_token(binarized) @ codes.T + binarized.sum(-1, keepdim=True) * (mean - rest.row_scale.double())
        if salient is not None:
            y = y + _rounded_per_token(x[..., weight.salient_index]) @ salient.T
        return y if module.bias is None else y + module.bias.double()

    return hook


def outputs_in_float64(output) -> list[torch.Tensor]:
    return [t.double() for t in output.values()]


def against_float64(loaded, checkpoint_dir: Path, task: str, artifact: Path) -> tuple[list, list]:
    reference = float64_reference(checkpoint_dir, task, artifact)
    ids = torch.randint(5, 100, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # a padded row
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.inference_mode():
        ours, exact = outputs_in_float64(loaded.model(**batch)), outputs_in_float64(reference(**batch))
    assert len(ours) == len(exact) == (2 if task == "qa" else 1)
    return ours, exact
