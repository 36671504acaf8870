"""The model catalog (`models/catalog.toml`): tasks, checkpoints, evaluation data and precisions."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantization.config import (
    ActivationQuantConfig,
    PrecisionConfig,
    PreprocessingConfig,
    QATConfig,
    WeightQuantConfig,
)
from quantization.tasks import BUILT_IN_KINDS, KIND_BY_NAME, KINDS, Task, task_from_spec

REPO_ROOT = Path(__file__).resolve().parents[1]


def repo_root() -> Path:
    return Path(os.environ.get("QBERT_ROOT", REPO_ROOT))


def checkpoints_dir() -> Path:
    return Path(os.environ.get("QBERT_CHECKPOINTS", repo_root() / ".." / "shared" / "models")).resolve()


def data_dir() -> Path:
    return Path(os.environ.get("QBERT_DATA", repo_root() / ".." / "shared" / "data")).resolve()


def hessian_dir() -> Path:
    """`qbert hessian` results, `<task>.json` and `<task>.png` (committed: the plans are made from them)."""
    return repo_root() / "models" / "hessian"


def plans_dir() -> Path:
    """Bit-allocation plans, `<task>/<name>.json`, written by `qbert allocate` (committed: they are small)."""
    return Path(os.environ.get("QBERT_PLANS", repo_root() / "models" / "plans")).resolve()


def artifacts_dir() -> Path:
    return Path(os.environ.get("QBERT_ARTIFACTS", repo_root() / "models" / "artifacts")).resolve()


@dataclass(frozen=True)
class TaskEntry:
    task: str
    checkpoint: str  # a folder name under checkpoints_dir(), a path, or a hub id
    data: Path | None  # evaluation data; None: built, served, never evaluated
    precisions: tuple[str, ...]
    articles: tuple[int, int] | None = None
    # The reproduction study (QAT, mixed precision, ablations): built by `qbert build --study`, never by `serve`.
    study: tuple[str, ...] = ()
    train_data: Path | None = None
    train_articles: tuple[int, int] | None = None
    qat: dict[str, Any] = dataclasses.field(default_factory=dict)  # this task's QATConfig overrides
    # The task's kind and its options (a classifier's TSV columns, problem type); None: a built-in task by name.
    kind: str | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"task {self.task!r}: unknown kind {self.kind!r}; supported kinds: {', '.join(KINDS)}")
        allowed = KIND_BY_NAME[self.kind].options if self.kind is not None else frozenset()
        unknown = set(self.options) - allowed
        if unknown:
            raise ValueError(f"task {self.task!r}: the {self.kind} kind takes no options {sorted(unknown)}")

    @property
    def spec(self) -> dict[str, Any] | None:
        """The kind and its options as artifacts record them; None for a built-in model of its own kind and no
        options (its artifacts predate specs, and stay up to date)."""
        if self.kind is None or (self.kind == BUILT_IN_KINDS.get(self.task) and not self.options):
            return None
        return {"kind": self.kind, "options": self.options}

    def make_task(self) -> Task:
        return task_from_spec(self.task, self.spec)

    def checkpoint_location(self) -> str:
        """A local folder where one exists, else the string itself (a hub id)."""
        for candidate in (checkpoints_dir() / self.checkpoint, Path(self.checkpoint)):
            if candidate.is_dir():
                return str(candidate.resolve())
        return self.checkpoint

    def read_options(self) -> dict[str, Any]:
        return {"articles": self.articles} if self.articles else {}

    def train_options(self) -> dict[str, Any]:
        return {"articles": self.train_articles} if self.train_articles else {}

    def qat_recipe(self, base: QATConfig) -> QATConfig:
        """`base` with this task's overrides (`[tasks.T.training] qat = {...}`)."""
        return dataclasses.replace(base, **self.qat) if self.qat else base

    def train_split(self) -> str:
        if self.train_data is None:
            raise ValueError(f"task {self.task!r} has no training data in the catalog (`train_data`)")
        articles = f" articles [{self.train_articles[0]}, {self.train_articles[1]})" if self.train_articles else ""
        return f"{self.train_data.name}{articles}"


@dataclass(frozen=True)
class Catalog:
    tasks: dict[str, TaskEntry]
    precisions: dict[str, PrecisionConfig]
    plans: dict[str, str] = dataclasses.field(default_factory=dict)  # precision -> plan name (per task)
    # served precision -> its stand-in: built first (in seconds), it serves under the served precision's name until
    # that one's artifact is built (a QAT recipe takes minutes per task), then gives way to it
    stand_ins: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for served, stand_in in self.stand_ins.items():
            if served not in self.precisions or stand_in not in self.precisions or served == stand_in:
                raise ValueError(f"stand-in {served!r} = {stand_in!r}: both must be other, defined precisions")

    def precision(self, name: str) -> PrecisionConfig:
        if name not in self.precisions:
            raise ValueError(f"unknown precision {name!r}; the catalog has {sorted(self.precisions)}")
        return self.precisions[name]

    def precision_for(self, task: str, name: str) -> PrecisionConfig:
        """The precision as built for `task`: its plan's layer bits read in, the task's QAT overrides applied."""
        precision = self.precision(name)
        entry = self.task(task)
        changes: dict[str, Any] = {}
        plan = self.plans.get(name)
        if plan is not None:
            changes["layer_bits"] = {**read_plan(plans_dir() / task / f"{plan}.json"), **precision.layer_bits}
        if precision.qat is not None and entry.qat:
            changes["qat"] = entry.qat_recipe(precision.qat)
        return dataclasses.replace(precision, **changes) if changes else precision

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
        qat=QATConfig(**data["qat"]) if "qat" in data else None,
        preprocessing=PreprocessingConfig(**data["preprocessing"]) if "preprocessing" in data else None,
    )


def read_plan(path: Path) -> dict[str, int]:
    """The `layer_bits` of a plan file written by `qbert allocate`."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such plan; make it with `qbert hessian --task T` then `qbert allocate` (README: reproduction)"
        )
    data = json.loads(path.read_text())
    if not isinstance(data.get("layer_bits"), dict):
        raise ValueError(f"{path}: a plan holds a `layer_bits` object (module name -> bits)")
    return {str(k): int(v) for k, v in data["layer_bits"].items()}


def catalog_path() -> Path:
    return Path(os.environ.get("QBERT_CATALOG", repo_root() / "models" / "catalog.toml")).resolve()


def user_catalog_path() -> Path:
    """The models users added with `qbert add` (`[tasks.NAME]` entries, read with the catalog's own; not in git)."""
    return Path(os.environ.get("QBERT_USER_CATALOG", repo_root() / "models" / "user-catalog.toml")).resolve()


def read_user_entries(path: Path | None = None) -> dict[str, Any]:
    """The raw `[tasks.*]` tables of the user catalog (none where it does not exist)."""
    path = path or user_catalog_path()
    if not path.is_file():
        return {}
    return dict(tomllib.loads(path.read_text()).get("tasks", {}))


def load_catalog(path: Path | None = None, user_path: Path | None = None) -> Catalog:
    """The catalog at `path` with the user catalog's models (`qbert add`) added; a user model may not take a name
    the catalog already has."""
    path = path or catalog_path()
    raw = tomllib.loads(Path(path).read_text())
    user = read_user_entries(user_path)
    clashes = sorted(set(user) & set(raw.get("tasks", {})))
    if clashes:
        raise ValueError(f"{user_path or user_catalog_path()}: {clashes} already name models of {path}")
    raw.setdefault("tasks", {}).update(user)
    specs = raw.get("precisions", {})
    precisions = {
        name: precision_from_dict(name, {k: v for k, v in spec.items() if k != "plan"}) for name, spec in specs.items()
    }
    plans = {name: spec["plan"] for name, spec in specs.items() if "plan" in spec}
    tasks = {}
    for name, spec in raw.get("tasks", {}).items():
        missing = [p for p in (*spec["precisions"], *spec.get("study", [])) if p not in precisions]
        if missing:
            raise ValueError(f"{path}: task {name!r} lists undefined precisions {missing}")
        tasks[name] = entry_from_table(name, spec)
    return Catalog(tasks, precisions, plans, dict(raw.get("stand_ins", {})))


def entry_from_table(name: str, spec: dict[str, Any]) -> TaskEntry:
    """A `[tasks.NAME]` table as an entry (relative data paths are under `data_dir()`); ValueError or TypeError
    where a field is wrong."""
    articles, training = spec.get("articles"), spec.get("training", {})
    QATConfig(**training.get("qat", {}))  # overrides are checked here, not at the first build
    return TaskEntry(
        task=name,
        checkpoint=spec["checkpoint"],
        data=data_dir() / spec["data"] if "data" in spec else None,
        precisions=tuple(spec["precisions"]),
        articles=tuple(articles) if articles else None,
        study=tuple(p for p in spec.get("study", []) if p not in spec["precisions"]),
        train_data=data_dir() / training["data"] if "data" in training else None,
        train_articles=tuple(training["articles"]) if "articles" in training else None,
        qat=dict(training.get("qat", {})),
        kind=spec.get("kind"),
        options=dict(spec.get("options", {})),
    )
