"""Which artifacts the service loads: `<artifacts>/<task>/<precision>/manifest.json` on disk."""

from __future__ import annotations

import logging
from pathlib import Path

from quantization.artifact_files import MANIFEST
from service.protocol import ArtifactRef

logger = logging.getLogger("qbert.service")


def discover_artifacts(
    root: Path, tasks: list[str], precisions: list[str] | None, unless_named: frozenset[str] = frozenset()
) -> list[ArtifactRef]:
    """Artifacts of `tasks` under `root`: every precision found except `unless_named` (the catalog's reproduction
    study, dozens of artifacts), or exactly `precisions` (missing ones warned)."""
    refs = []
    for task in tasks:
        task_dir = Path(root) / task
        found = sorted(p.name for p in task_dir.iterdir() if (p / MANIFEST).is_file()) if task_dir.is_dir() else []
        wanted = (
            [p for p in found if p not in unless_named] if precisions is None else [p for p in precisions if p in found]
        )
        missing = [] if precisions is None else sorted(set(precisions) - set(found))
        if missing:
            logger.warning("%s: no artifact for %s under %s (run `qbert build`)", task, missing, task_dir)
        refs.extend(ArtifactRef(task, precision, task_dir / precision) for precision in wanted)
    return refs
