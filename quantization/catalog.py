"""The model catalog (`models/catalog.toml`): tasks, checkpoints, evaluation data and precisions."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantization.config import ActivationQuantConfig, PrecisionConfig, WeightQuantConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_root() -> Path:
    return Path(os.environ.get("QBERT_ROOT", REPO_ROOT))


def checkpoints_dir() -> Path:
    return Path(os.environ.get("QBERT_CHECKPOINTS", repo_root() / ".." / "shared" / "models")).resolve()


def data_dir() -> Path:
    return Path(os.environ.get("QBERT_DATA", repo_root() / ".." / "shared" / "data")).resolve()


def artifacts_dir() -> Path:
    return Path(os.environ.get("QBERT_ARTIFACTS", repo_root() / "models" / "artifacts")).resolve()


@dataclass(frozen=True)
class TaskEntry:
    task: str
    checkpoint: str  # a folder name under checkpoints_dir(), a path, or a hub id
    data: Path
    precisions: tuple[str, ...]
    articles: tuple[int, int] | None = None

    def checkpoint_location(self) -> str:
        """A local folder where one exists, else the string itself (a hub id)."""
        for candidate in (checkpoints_dir() / self.checkpoint, Path(self.checkpoint)):
            if candidate.is_dir():
                return str(candidate.resolve())
        return self.checkpoint

    def read_options(self) -> dict[str, Any]:
        return {"articles": self.articles} if self.articles else {}


@dataclass(frozen=True)
class Catalog:
    tasks: dict[str, TaskEntry]
    precisions: dict[str, PrecisionConfig]

    def precision(self, name: str) -> PrecisionConfig:
        if name not in self.precisions:
            raise ValueError(f"unknown precision {name!r}; the catalog has {sorted(self.precisions)}")
        return self.precisions[name]

    def task(self, name: str) -> TaskEntry:
        if name not in self.tasks:
            raise ValueError(f"unknown task {name!r}; the catalog has {sorted(self.tasks)}")
        return self.tasks[name]


def precision_from_dict(name: str, data: dict[str, Any]) -> PrecisionConfig:
    weights = data.get("weights")
    embeddings = data.get("embeddings")
    activations = data.get("activations")
    return PrecisionConfig(
        name=name,
        weights=WeightQuantConfig(**weights) if weights else None,
        embeddings=WeightQuantConfig(**embeddings) if embeddings else None,
        activations=ActivationQuantConfig(**activations) if activations else None,
        layer_bits=dict(data.get("layer_bits", {})),
    )


def load_catalog(path: Path | None = None) -> Catalog:
    path = path or repo_root() / "models" / "catalog.toml"
    raw = tomllib.loads(Path(path).read_text())
    precisions = {name: precision_from_dict(name, spec) for name, spec in raw.get("precisions", {}).items()}
    tasks = {}
    for name, spec in raw.get("tasks", {}).items():
        missing = [p for p in spec["precisions"] if p not in precisions]
        if missing:
            raise ValueError(f"{path}: task {name!r} lists undefined precisions {missing}")
        articles = spec.get("articles")
        tasks[name] = TaskEntry(
            task=name,
            checkpoint=spec["checkpoint"],
            data=data_dir() / spec["data"],
            precisions=tuple(spec["precisions"]),
            articles=tuple(articles) if articles else None,
        )
    return Catalog(tasks, precisions)
