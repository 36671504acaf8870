"""Each kind of task is one module under `quantization/tasks/`: its facts are read from it, never decided elsewhere by
its name or its classes."""

from __future__ import annotations

import ast
import importlib
import pkgutil

import pytest

import quantization.tasks as tasks_package
from quantization.tasks import KIND_BY_NAME, KINDS, TASKS, get_kind, task_from_spec
from tests.unit.test_layering import modules

pytestmark = pytest.mark.unit


def _kind_modules() -> dict[str, str]:
    """The module that declares each kind -> the kind's name."""
    owners = {}
    for info in pkgutil.iter_modules(tasks_package.__path__):
        module = importlib.import_module(f"{tasks_package.__name__}.{info.name}")
        kind = getattr(module, "KIND", None)
        if kind is not None:
            owners[module.__name__] = kind.name
    assert sorted(owners.values()) == sorted(KIND_BY_NAME)
    return owners


def _string_constants(tree: ast.Module) -> set[str]:
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    }


def test_the_three_kinds_are_found_with_their_built_in_tasks() -> None:
    assert KINDS == ("question-answering", "sequence-classification", "token-classification")
    assert {name: task.kind for name, task in TASKS.items()} == {
        "qa": "question-answering",
        "sst2": "sequence-classification",
        "ner": "token-classification",
    }


def test_no_module_outside_a_kind_names_it_or_imports_its_module() -> None:
    owners = _kind_modules()
    named: dict[str, list[str]] = {}
    for module, path in modules().items():
        tree = ast.parse(path.read_text())
        constants = _string_constants(tree)
        imported = {
            node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module in owners
        }
        for kind_module, kind in owners.items():
            if module == kind_module:
                continue
            if kind in constants or kind_module in imported:
                named.setdefault(kind, []).append(module)
    assert named == {}


def test_a_spec_of_each_kind_makes_its_task_and_unknown_kinds_are_named() -> None:
    for name in KINDS:
        task = task_from_spec("mine", {"kind": name, "options": {}})
        assert (task.kind, task.name, task.route) == (name, "mine", "/predict/mine")
        assert task.request_model().model_json_schema()["properties"]
        assert [spec.datatype for spec in task.v2_inputs()] == ["BYTES"] * len(task.v2_inputs())
    with pytest.raises(ValueError, match="supported kinds: question-answering, sequence-classification"):
        get_kind("image-classification")
    with pytest.raises(ValueError, match="takes no options"):
        task_from_spec("mine", {"kind": "question-answering", "options": {"columns": {}}})
