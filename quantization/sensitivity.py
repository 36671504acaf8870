"""Hessian sensitivity results as data: the cache file `qbert hessian` writes, its table and its figure.

The algorithms are in `hessian`; this module only (de)serializes and presents their `BlockSensitivity` results.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantization.hessian import BlockSensitivity, LossFn

CACHE_FORMAT = "qbert-hessian"


def batch_losses(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> list[LossFn]:
    """One loss function per mini-batch: the task loss `model` computes from the batch's targets."""

    def loss_on(batch: dict[str, torch.Tensor]) -> LossFn:
        return lambda: model(**batch).loss

    return [loss_on(batch) for batch in batches]


def sensitivities_to_dict(results: Sequence[BlockSensitivity], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        **meta,
        "blocks": [
            {
                "block": r.block,
                "eigenvalues": list(r.eigenvalues),
                "iterations": list(r.iterations),
                "converged": list(r.converged),
                "mean": r.mean,
                "std": r.std,
                "omega": r.omega,
                "traces": list(r.traces),
                "trace": r.trace if r.traces else None,
                "weight_traces": r.weight_traces,
            }
            for r in results
        ],
    }


def sensitivities_from_dict(data: dict[str, Any]) -> list[BlockSensitivity]:
    if data.get("format") != CACHE_FORMAT:
        raise ValueError(f"not a `qbert hessian` result (format {data.get('format')!r})")
    return [
        BlockSensitivity(
            block=b["block"],
            eigenvalues=tuple(b["eigenvalues"]),
            traces=tuple(b["traces"]),
            weight_traces=dict(b["weight_traces"]),
            iterations=tuple(b.get("iterations", ())),
            converged=tuple(b.get("converged", ())),
        )
        for b in data["blocks"]
    ]


def sensitivity_table(results: Sequence[BlockSensitivity]) -> str:
    """Markdown: λ per block (mean ± std over mini-batches), Ω, rank by Ω, trace, convergence."""
    ranks = {r.block: i + 1 for i, r in enumerate(sorted(results, key=lambda r: -r.omega))}
    lines = [
        "| block | mean λ | std λ | Ω = |mean| + std | rank | min λ | max λ | mean trace | converged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        trace = f"{r.trace:.4g}" if r.traces else "—"
        converged = f"{sum(r.converged)}/{len(r.converged)}" if r.converged else "—"
        lines.append(
            f"| {r.block} | {r.mean:.4g} | {r.std:.4g} | {r.omega:.4g} | {ranks[r.block]} | "
            f"{min(r.eigenvalues):.4g} | {max(r.eigenvalues):.4g} | {trace} | {converged} |"
        )
    return "\n".join(lines)


def figure_title(meta: dict[str, Any]) -> str:
    return (
        f"{meta['task']}: top Hessian eigenvalue per block\n"
        f"{meta['batches']} batches of {meta['batch_size']} from {meta['split']}"
    )


def plot_sensitivity(results: Sequence[BlockSensitivity], path: Path, title: str) -> None:
    """Q-BERT's Figure 2: the top eigenvalue per block, mean with ± one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.55 * len(results)), 3.8))
    positions = range(1, len(results) + 1)
    ax.errorbar(positions, [r.mean for r in results], yerr=[r.std for r in results], fmt="o", capsize=4)
    for x, r in zip(positions, results, strict=True):
        ax.scatter([x] * len(r.eigenvalues), r.eigenvalues, s=6, color="C1", alpha=0.5, zorder=0)
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_xticks(list(positions))
    ax.set_xlabel("encoder block")
    ax.set_ylabel("top Hessian eigenvalue λ")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def module_traces(results: Sequence[BlockSensitivity]) -> dict[str, float]:
    """Hessian trace per Linear module, by its fully qualified name (block name + local module name)."""
    return {
        f"{r.block}.{local.removesuffix('.weight')}": value for r in results for local, value in r.weight_traces.items()
    }
