"""Task kinds and the tasks served: data reading, pre/post-processing and metrics, shared by eval and the service.

A served model's task is its catalog name plus a *spec*: the kind and the kind's options (a classifier's TSV
columns and problem type). The spec travels in each artifact's manifest, so a worker serves any artifact without the
catalog. The three built-in names keep their kinds and defaults.
"""

from __future__ import annotations

from typing import Any

from quantization.kinds import KINDS
from quantization.tasks.base import Example, Feature, Task, pad_features
from quantization.tasks.ner import NERTask
from quantization.tasks.qa import QATask
from quantization.tasks.sequence_classification import Columns, SequenceClassificationTask, sst2

TASKS: dict[str, Task] = {task.name: task for task in (sst2(), NERTask(), QATask())}


def get_task(name: str) -> Task:
    """A built-in task by name."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None


def task_from_spec(name: str, spec: dict[str, Any] | None) -> Task:
    """The task served as `name` with `spec` (`TaskEntry.spec`, as artifacts record it); a built-in name without a
    spec is the built-in task. Raises ValueError naming the supported kinds for any other kind."""
    if spec is None:
        return get_task(name)
    kind, options = spec.get("kind"), dict(spec.get("options") or {})
    if kind == "sequence-classification":
        columns = Columns(**options.pop("columns", {}))
        return SequenceClassificationTask(name, columns, **options)
    if options:
        raise ValueError(f"task {name!r}: the {kind} kind takes no options, got {sorted(options)}")
    if kind == "token-classification":
        return NERTask(name)
    if kind == "question-answering":
        return QATask(name)
    raise ValueError(f"task {name!r}: unknown kind {kind!r}; supported kinds: {', '.join(KINDS)}")


__all__ = [
    "KINDS",
    "TASKS",
    "Example",
    "Feature",
    "Task",
    "get_task",
    "pad_features",
    "task_from_spec",
]
