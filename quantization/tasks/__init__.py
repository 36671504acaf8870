"""Task kinds and the tasks served: data reading, pre/post-processing, metrics and HTTP shapes, shared by eval and
the service.

A served model's task is its catalog name plus a *spec*: the kind and the kind's options (a classifier's TSV
columns and problem type). The spec travels in each artifact's manifest, so a worker serves any artifact without the
catalog. The built-in names keep their kinds and defaults.

The kinds are this package's modules that define `KIND`: found here, so that adding a kind is adding its module.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from quantization.tasks.base import Example, Feature, Kind, Task, TensorSpec, TextToCheck


def _discover_kinds() -> dict[str, Kind]:
    found: dict[str, Kind] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        kind = getattr(importlib.import_module(f"{__name__}.{module_info.name}"), "KIND", None)
        if isinstance(kind, Kind):
            if kind.name in found:
                raise RuntimeError(f"two modules declare the kind {kind.name!r}")
            found[kind.name] = kind
    return dict(sorted(found.items()))


KIND_BY_NAME: dict[str, Kind] = _discover_kinds()
KINDS: tuple[str, ...] = tuple(KIND_BY_NAME)
TASKS: dict[str, Task] = {
    task.name: task for kind in KIND_BY_NAME.values() for task in (make() for make in kind.built_in)
}
BUILT_IN_KINDS: dict[str, str] = {name: task.kind for name, task in TASKS.items()}


def get_task(name: str) -> Task:
    """A built-in task by name."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None


def get_kind(name: str) -> Kind:
    """A kind by name; ValueError naming the supported kinds otherwise."""
    try:
        return KIND_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown kind {name!r}; supported kinds: {', '.join(KINDS)}") from None


def task_from_spec(name: str, spec: dict[str, Any] | None) -> Task:
    """The task served as `name` with `spec` (`TaskEntry.spec`, as artifacts record it); a built-in name without a
    spec is the built-in task. Raises ValueError naming the supported kinds for any other kind."""
    if spec is None:
        return get_task(name)
    try:
        kind = get_kind(spec.get("kind", ""))
    except ValueError as exc:
        raise ValueError(f"task {name!r}: {exc}") from None
    return kind.make_task(name, dict(spec.get("options") or {}))


__all__ = [
    "BUILT_IN_KINDS",
    "KINDS",
    "KIND_BY_NAME",
    "TASKS",
    "Example",
    "Feature",
    "Kind",
    "Task",
    "TensorSpec",
    "TextToCheck",
    "get_kind",
    "get_task",
    "task_from_spec",
]
