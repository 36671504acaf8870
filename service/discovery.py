"""Which artifacts the service loads: `<artifacts>/<task>/<precision>/manifest.json` on disk."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantization.artifact_files import MANIFEST
from quantization.catalog import Catalog
from quantization.tasks import TASKS, Task, task_from_spec
from service.protocol import ArtifactRef

logger = logging.getLogger("qbert.service")


def discover_artifacts(
    root: Path,
    tasks: list[str],
    precisions: list[str] | None,
    unless_named: frozenset[str] = frozenset(),
    stand_ins: Mapping[str, str] | None = None,
) -> list[ArtifactRef]:
    """Artifacts of `tasks` under `root`: every precision found except `unless_named` (the catalog's reproduction
    study, dozens of artifacts), or exactly `precisions` (missing ones warned).

    `stand_ins` (served precision -> stand-in, `Catalog.stand_ins`): a served precision whose own artifact is not
    there is served from its stand-in's, where that one is."""
    stand_ins = stand_ins or {}
    refs: list[ArtifactRef] = []
    for task in tasks:
        task_dir = Path(root) / task
        found = sorted(p.name for p in task_dir.iterdir() if (p / MANIFEST).is_file()) if task_dir.is_dir() else []
        folders = {p: p for p in found}
        for served, stand_in in stand_ins.items():
            if served not in folders and stand_in in folders and (precisions is None or served in precisions):
                folders[served] = stand_in
        wanted = (
            sorted(p for p in folders if p not in unless_named)
            if precisions is None
            else [p for p in precisions if p in folders]
        )
        missing = [] if precisions is None else sorted(set(precisions) - set(folders))
        if missing:
            logger.warning("%s: no artifact for %s under %s (run `qbert build`)", task, missing, task_dir)
        refs.extend(ArtifactRef(task, precision, task_dir / folders[precision]) for precision in wanted)
    return refs


def served_tasks(tasks: list[str], catalog: Catalog | None, refs: list[ArtifactRef]) -> dict[str, Task]:
    """Each served model's task (its routes' shapes come from it): from its catalog entry, else from one of its
    artifacts' manifests (an artifact folder served without the catalog), else the built-in name's."""
    served: dict[str, Task] = {}
    for task in tasks:
        spec: dict[str, Any] | None = None
        if catalog is not None and task in catalog.tasks:
            spec = catalog.tasks[task].spec
        else:
            path = next((ref.path for ref in refs if ref.task == task), None)
            if path is not None:
                spec = json.loads((path / MANIFEST).read_text()).get("task_spec")
        if spec is None and task not in TASKS:
            raise ValueError(f"{task}: neither the catalog nor an artifact says what kind of task it is")
        served[task] = task_from_spec(task, spec)
    return served
