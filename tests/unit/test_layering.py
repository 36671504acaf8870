"""The import contract (issue 21), read from the source: every import counts, also those inside functions.

- no import cycles among the project's modules;
- `quantization` (the offline algorithms and the runtime) never imports `service`, except the CLI, the top layer;
- nothing imports the CLI;
- the runtime (`quantization.runtime`) imports only itself and the artifact format and primitives it runs, never
  the offline algorithms (building, training, evaluating, benchmarking);
- torch's and transformers' private APIs appear only in the runtime's two fence modules;
- the API process's modules import neither torch nor transformers when they load (the workers and the builder do),
  nor does it when it builds its routes from the kinds found at run time and unpickles the workers' predictions;
- the load generators import neither FastAPI, transformers, torch nor the runtime when they load.
"""

from __future__ import annotations

import ast
import pickle
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGES = ("quantization", "service")
RUNTIME_MAY_IMPORT = {
    "quantization.architectures",  # which task-model classes an artifact may be: part of the format
    "quantization.artifact",
    "quantization.artifact_files",
    "quantization.binarized",  # PTQ1.61's stored layout
    "quantization.config",
    "quantization.primitives",
    "quantization.qtensor",
    "quantization.system",
}
FENCES = {
    "quantization/runtime/torch_internals.py": re.compile(
        r"torch\._(dynamo|inductor|int_mm|C)\b|torch\.ops\.onednn|_orig_mod"
    ),
    "quantization/runtime/transformers_internals.py": re.compile(
        r"ALL_ATTENTION_FUNCTIONS|_attn_implementation|BertSelfAttention|eager_attention_forward"
    ),
}
API_PROCESS = ("service.app", "service.pool", "service.builder", "service.worker_entry", "service.metrics")
LOAD_GENERATORS = ("quantization.loadgen.loadtest", "quantization.loadgen.soak")


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, top_level_only: bool = False) -> set[str]:
    """The project modules and the outside packages `name` imports (`top_level_only`: as it loads)."""
    tree = ast.parse(modules()[name].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    project = {m for m in found if m in modules() and m != name}
    outside = {m.split(".")[0] for m in found if m.split(".")[0] not in PACKAGES}
    return project | outside


def graph(top_level_only: bool = False) -> dict[str, set[str]]:
    return {name: {m for m in _imports(name, top_level_only) if m in modules()} for name in modules()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(edges)))
    try:
        for node in sorted(edges):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_there_are_no_import_cycles_even_inside_functions() -> None:
    assert _cycles(graph()) == []


def test_quantization_never_imports_the_service_and_nothing_imports_the_cli() -> None:
    edges = graph()
    upward = {
        name: sorted(m for m in targets if m.split(".")[0] == "service")
        for name, targets in edges.items()
        if name.startswith("quantization") and not name.startswith("quantization.cli")
    }
    assert {name: found for name, found in upward.items() if found} == {}
    importers = sorted(
        name for name, targets in edges.items() if any(t.startswith("quantization.cli") for t in targets)
    )
    assert [name for name in importers if not name.startswith("quantization.cli")] == []


def test_the_runtime_imports_only_itself_and_the_format_it_runs() -> None:
    edges = graph()
    runtime = {name: targets for name, targets in edges.items() if name.startswith("quantization.runtime")}
    assert runtime, "the runtime package is gone"
    beyond = {
        name: sorted(t for t in targets if not t.startswith("quantization.runtime") and t not in RUNTIME_MAY_IMPORT)
        for name, targets in runtime.items()
    }
    assert {name: found for name, found in beyond.items() if found} == {}


def test_library_internals_appear_only_in_their_fence_modules() -> None:
    for fence, pattern in FENCES.items():
        assert pattern.search((REPO_ROOT / fence).read_text()), f"{fence} no longer holds what it fences"
        outside = [
            f"{path.relative_to(REPO_ROOT)}:{number}"
            for path in modules().values()
            if path.relative_to(REPO_ROOT).as_posix() != fence
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if pattern.search(line.split("#")[0])  # comments may name them
        ]
        assert outside == [], f"private APIs outside {fence}"


def loaded_when_imported(roots: tuple[str, ...]) -> set[str]:
    """The project modules that importing `roots` runs (their top-level imports, parents' __init__ included)."""
    edges = graph(top_level_only=True)
    loaded, frontier = set(), list(roots)
    while frontier:
        name = frontier.pop()
        if name in loaded:
            continue
        loaded.add(name)
        frontier.extend(edges[name])
        for parent in range(1, name.count(".") + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            frontier.append(name.rsplit(".", parent)[0])
    return loaded


def test_the_api_process_loads_neither_torch_nor_transformers() -> None:
    loaded = loaded_when_imported(API_PROCESS)
    heavy = {name: sorted(_imports(name, top_level_only=True) & {"torch", "transformers"}) for name in loaded}
    assert {name: found for name, found in heavy.items() if found} == {}


def test_the_api_process_routes_and_reads_predictions_without_torch() -> None:
    # The kinds are found by name at run time and the predictions arrive pickled: neither shows in the import graph.
    from quantization.tasks import TASKS
    from quantization.tasks.ner import Entity, NerPrediction
    from quantization.tasks.qa import QAPrediction
    from quantization.tasks.sequence_classification import ClassPrediction

    predictions = [
        ClassPrediction("positive", 0.9, {"negative": 0.1, "positive": 0.9}),
        NerPrediction(["B-PER"], [Entity("PER", "John", 0, 4, 0.9)]),
        QAPrediction("Paris", 20, 25, 0.8),
    ]
    code = (
        "import pickle, sys\n"
        "from service.app import Service, build_app\n"
        "from service.metrics import ServiceMetrics\n"
        "from service.settings import ServiceSettings\n"
        "settings = ServiceSettings(tasks=sys.argv[1:], precisions=['w8'])\n"
        "build_app(Service(settings, [], ServiceMetrics())).openapi()\n"
        "pickle.loads(sys.stdin.buffer.read())\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *sorted(TASKS)],
        input=pickle.dumps(predictions),
        capture_output=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().strip().splitlines()[-1] == "[]"


def test_a_load_generator_loads_no_server_model_or_runtime() -> None:
    loaded = loaded_when_imported(LOAD_GENERATORS)
    assert not any(name.startswith(("service", "quantization.runtime")) for name in loaded), sorted(loaded)
    heavy = {
        name: sorted(_imports(name, top_level_only=True) & {"torch", "transformers", "fastapi"}) for name in loaded
    }
    assert {name: found for name, found in heavy.items() if found} == {}
