"""What attention's two products on int8 operands would cost in accuracy: an artifact's metric on the reference
(eager) path as it is, and with q·kᵀ and p·v on int8 codes, the way an int8 attention kernel (OpenVINO INT8's, or
one of ours) would compute them: q and k rounded per row (token and head) to 127 steps of their absolute maximum,
v per head, and the softmax's probabilities to u8 codes: 255 steps of [0, 1] (`--probabilities fixed`, as OpenVINO's
static scale) or of each row's largest (`row`); `--products scores` or `values` rounds only q·kᵀ's or p·v's
operands. A study, not a runtime path: OpenVINO INT8 computes attention this way, and the figures say what the same
would cost our artifacts.

    .venv/bin/python scripts/int8-attention-study.py TASK ARTIFACT [ARTIFACT ...] [--probabilities fixed|row]
        [--products both|scores|values]

Each artifact is evaluated from a temporary copy (the reference path records its results in the manifest).
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from quantization.build import evaluate_artifact
from quantization.catalog import load_catalog
from quantization.primitives import token_scales

PRIMARY_METRIC = {"sst2": "accuracy", "ner": "entity_f1", "qa": "f1"}
PROBABILITY_LEVELS = 255  # u8 codes of probabilities in [0, 1]


def rounded(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x on integer codes of `scale`'s steps, dequantized."""
    return torch.round(x / scale) * scale


def int8_attention(
    products: str,
    row_scaled_probabilities: bool,
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention's contract ([batch, heads, seq, dim] in, [batch, seq, heads, dim] out)."""
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if products in ("both", "scores"):
        # per row, as our runtime quantizes a Linear's input tokens
        query, key = rounded(query, token_scales(query)), rounded(key, token_scales(key))
    scores = query @ key.transpose(-1, -2) * scale
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    probabilities = torch.softmax(scores, dim=-1)
    if products in ("both", "values"):
        if row_scaled_probabilities:
            probabilities = rounded(probabilities, probabilities.amax(-1, keepdim=True) / PROBABILITY_LEVELS)
        else:
            probabilities = torch.round(probabilities * PROBABILITY_LEVELS) / PROBABILITY_LEVELS
        value = rounded(value, token_scales(value.flatten(-2)).unsqueeze(-1))  # one scale per head
    return (probabilities @ value).transpose(1, 2).contiguous(), None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=sorted(PRIMARY_METRIC))
    parser.add_argument("artifacts", type=Path, nargs="+")
    parser.add_argument("--probabilities", choices=("fixed", "row"), default="fixed")
    parser.add_argument("--products", choices=("both", "scores", "values"), default="both")
    args = parser.parse_args()
    torch.set_num_threads(2)
    entry = load_catalog().task(args.task)
    metric = PRIMARY_METRIC[args.task]
    float32_attention = ALL_ATTENTION_FUNCTIONS["sdpa"]
    for artifact in args.artifacts:
        values = {}
        for products, function in (
            ("float32", float32_attention),
            ("int8", functools.partial(int8_attention, args.products, args.probabilities == "row")),
        ):
            # the models built from here on resolve "sdpa" to this function (the stacked Q/K/V module included);
            # the registry's public `register` would add a name, not replace the one the artifacts' configs select
            ALL_ATTENTION_FUNCTIONS._global_mapping["sdpa"] = function
            with tempfile.TemporaryDirectory() as scratch:
                copy = Path(scratch) / artifact.name
                shutil.copytree(artifact, copy)
                rows = evaluate_artifact(copy, entry, latency_samples=1)
            values[products] = next(row["value"] for row in rows if row["metric"] == metric)
        ALL_ATTENTION_FUNCTIONS._global_mapping["sdpa"] = float32_attention
        change = (values["int8"] - values["float32"]) * 100
        sys.stdout.write(
            f"{args.task} {artifact.name}: {metric} {values['float32'] * 100:.2f} with float32 attention, "
            f"{values['int8'] * 100:.2f} with int8 operands ({args.products}, probabilities {args.probabilities}) "
            f"({change:+.2f} pt)\n"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
