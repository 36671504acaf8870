"""Tasks by name: data reading, pre/post-processing and metrics, shared by eval and the service."""

from typing import Any

from quantization.tasks.base import Example, Feature, Task, pad_features
from quantization.tasks.ner import NerInput, NERTask
from quantization.tasks.qa import QAInput, QATask
from quantization.tasks.sst2 import SST2Task

TASKS: dict[str, Task] = {task.name: task for task in (SST2Task(), NERTask(), QATask())}


def task_input(task: str, payload: Any) -> Any:
    """The task's input from a request payload: a text (sst2, ner) or a (question, context) pair (qa)."""
    if task == "ner":
        return NerInput.from_text(payload)
    if task == "qa":
        question, context = payload
        return QAInput(question, context)
    return payload


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None


__all__ = ["TASKS", "Example", "Feature", "Task", "get_task", "pad_features", "task_input"]
