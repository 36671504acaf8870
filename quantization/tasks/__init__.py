"""Tasks by name: data reading, pre/post-processing and metrics, shared by eval and the service."""

from quantization.tasks.base import Example, Feature, Task, pad_features
from quantization.tasks.ner import NERTask
from quantization.tasks.qa import QATask
from quantization.tasks.sequence_classification import sst2

TASKS: dict[str, Task] = {task.name: task for task in (sst2(), NERTask(), QATask())}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None


__all__ = ["TASKS", "Example", "Feature", "Task", "get_task", "pad_features"]
