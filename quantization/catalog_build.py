"""Building the catalog: which artifacts are missing or stale, in the order that serves soonest, with each step
reported as it happens (`qbert build`'s progress display, and `qbert serve`'s builder process feeding the pool).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantization.catalog import Catalog, TaskEntry

logger = logging.getLogger(__name__)

# An artifact's steps in a build, in order. `built`: written and evaluated (or found so: `detail` "up to date");
# `skipped`: a stand-in not needed, since the artifact it stands in for is already up to date.
BUILD_STATES = ("pending", "building", "evaluating", "built", "failed", "skipped")
FINISHED_STATES = frozenset({"built", "failed", "skipped"})


@dataclass(frozen=True)
class BuildJob:
    task: str
    precision: str
    stands_in_for: str = ""  # a stand-in's served precision (`Catalog.stand_ins`): it serves under that name too
    served: bool = True  # under its own name; a stand-in that is not is skipped where the one it stands in for is built

    @property
    def key(self) -> tuple[str, str]:
        return (self.task, self.precision)


@dataclass(frozen=True)
class BuildEvent:
    """One artifact moved on: it began building or evaluating, advanced within that step, was built, or failed."""

    task: str
    precision: str
    state: str  # one of BUILD_STATES
    jobs_done: int  # artifacts through the build before this event's
    jobs_total: int
    done: int = 0  # units of this step (QAT steps, evaluated sequences) done so far, of `total` (0: unknown)
    total: int = 0
    unit: str = ""
    accuracy: tuple[dict[str, Any], ...] = ()  # with `built`: the manifest's evaluation rows
    detail: str = ""  # with `failed`: why; with `built`: "up to date" when nothing had to be done

    @property
    def key(self) -> tuple[str, str]:
        return (self.task, self.precision)


def catalog_jobs(
    catalog: Catalog, tasks: Sequence[str] | None = None, precisions: Sequence[str] | None = None, study: bool = False
) -> list[BuildJob]:
    """Every catalog artifact of `tasks` at `precisions` (None: all), and of the reproduction study with `study`;
    a precision with a stand-in comes after its stand-in's job (one job per artifact)."""
    jobs: dict[tuple[str, str], BuildJob] = {}
    for task in list(catalog.tasks) if tasks is None else [t for t in tasks if t in catalog.tasks]:
        entry = catalog.task(task)
        wanted = [
            p for p in (*entry.precisions, *(entry.study if study else ())) if precisions is None or p in precisions
        ]
        stood_in = {catalog.stand_ins[p]: p for p in wanted if p in catalog.stand_ins}
        for precision in wanted:
            stand_in = catalog.stand_ins.get(precision)
            if stand_in is not None:
                job = BuildJob(task, stand_in, stands_in_for=precision, served=stand_in in wanted)
                jobs.setdefault(job.key, job)
            jobs.setdefault((task, precision), BuildJob(task, precision, stands_in_for=stood_in.get(precision, "")))
    return list(jobs.values())


def serving_order(
    jobs: Iterable[BuildJob], first_precision: str, slow_precisions: Collection[str] = ()
) -> list[BuildJob]:
    """Each task's `first_precision` (what requests get by default) before every other artifact, tasks in order:
    the service can answer every task after three builds, not after all of them. `slow_precisions` (QAT recipes,
    minutes each) go last, so that every quick artifact serves first."""
    jobs = list(jobs)
    first = [j for j in jobs if j.precision == first_precision]
    rest = [j for j in jobs if j.precision != first_precision]
    return (
        first
        + [j for j in rest if j.precision not in slow_precisions]
        + [j for j in rest if j.precision in slow_precisions]
    )


@dataclass
class _Checkpoints:
    """Each task's FP32 checkpoint and its digest, each read once (eighteen artifacts share three checkpoints)."""

    loaded: dict[str, Any] = field(default_factory=dict)
    digests: dict[Path, str] = field(default_factory=dict)  # each checkpoint hashed once, not once per precision

    def sha256(self, location: Path) -> str:
        from quantization.build import checkpoint_sha256

        if location not in self.digests:
            self.digests[location] = checkpoint_sha256(location)
        return self.digests[location]

    def get(self, entry: TaskEntry) -> Any:
        from quantization.build import load_checkpoint

        if entry.task not in self.loaded:
            self.loaded[entry.task] = load_checkpoint(entry.checkpoint_location(), entry.make_task())
        return self.loaded[entry.task]


def _evaluation(out: Path) -> tuple[dict[str, Any], ...]:
    from quantization.artifact import ArtifactError, read_manifest  # torch: only where artifacts are built

    try:
        return tuple(read_manifest(out).get("evaluation") or ())
    except ArtifactError:
        return ()


def _needs(
    catalog: Catalog, entry: TaskEntry, precision: str, out: Path, force: bool, checkpoints: _Checkpoints
) -> str | None:
    """What `out` needs: "build", "evaluate", or None (up to date, and evaluated where the entry has evaluation data).

    An artifact whose checkpoint is not here (mounted into a container, built elsewhere) is taken as it is.
    """
    from quantization.build import inputs_sha256, is_up_to_date

    unevaluated = "evaluate" if entry.data is not None else None
    location = Path(entry.checkpoint_location())
    if not location.is_dir():
        if (out / "manifest.json").is_file() and not force:
            return None if _evaluation(out) else unevaluated
        return "build"  # from a hub id, where one is reachable
    expected = inputs_sha256(
        checkpoints.sha256(location), catalog.precision_for(entry.task, precision), entry.task, entry.spec
    )
    if force or not is_up_to_date(out, expected):
        return "build"
    return None if _evaluation(out) else unevaluated


@dataclass
class _Reporter:
    """Sends one job's events."""

    job: BuildJob
    index: int
    jobs_total: int
    on_event: Callable[[BuildEvent], None]
    evaluated: int = 0  # `evaluate`'s callback gives each forward pass's sequences, not the running count

    def __call__(self, state: str, done: int = 0, total: int = 0, unit: str = "", **extra: Any) -> BuildEvent:
        job = self.job
        event = BuildEvent(job.task, job.precision, state, self.index, self.jobs_total, done, total, unit, **extra)
        self.on_event(event)
        return event

    def trained(self, step: int, total: int) -> None:
        self("building", step, total, "QAT steps")

    def evaluated_more(self, sequences: int, total: int) -> None:
        self.evaluated += sequences
        self("evaluating", self.evaluated, total, "sequences")


def _build_job(
    catalog: Catalog,
    job: BuildJob,
    out: Path,
    checkpoints: _Checkpoints,
    report: _Reporter,
    force: bool,
    batch_size: int,
) -> BuildEvent:
    from quantization.build import build_artifact, evaluate_artifact

    entry = catalog.task(job.task)
    if not job.served:
        served = out.parent / job.stands_in_for
        if _needs(catalog, entry, job.stands_in_for, served, force, checkpoints) is None:
            return report("skipped", detail=f"{job.stands_in_for} is up to date")
    needs = _needs(catalog, entry, job.precision, out, force, checkpoints)
    if needs == "build":
        precision = catalog.precision_for(job.task, job.precision)
        steps = precision.qat.steps if precision.qat else 0
        report("building", 0, steps, "QAT steps" if steps else "")
        build_artifact(
            checkpoints.get(entry), entry, precision, out, on_step=lambda step, _loss: report.trained(step, steps)
        )
    if needs is not None and entry.data is not None:
        report("evaluating")
        evaluate_artifact(out, entry, batch_size=batch_size, on_batch=report.evaluated_more)
    return report("built", accuracy=_evaluation(out), detail="" if needs else "up to date")


def build_catalog(
    catalog: Catalog,
    jobs: Sequence[BuildJob],
    root: Path,
    on_event: Callable[[BuildEvent], None],
    force: bool = False,
    batch_size: int = 32,
) -> list[BuildEvent]:
    """Build and evaluate each job's artifact under `root/<task>/<precision>/` that is missing or stale, in order.

    Every step is reported to `on_event`; one artifact failing (a missing plan or checkpoint) fails that artifact
    only. A stand-in whose served precision is up to date is skipped. Returns each job's last event (`built`,
    `failed` or `skipped`).
    """
    checkpoints = _Checkpoints()
    outcomes = []
    for index, job in enumerate(jobs):
        report = _Reporter(job, index, len(jobs), on_event)
        try:
            outcomes.append(
                _build_job(catalog, job, root / job.task / job.precision, checkpoints, report, force, batch_size)
            )
        except (OSError, ValueError, RuntimeError) as exc:  # this artifact fails (ArtifactError too); the next may not
            logger.exception("building %s/%s failed", job.task, job.precision)
            outcomes.append(report("failed", detail=f"{type(exc).__name__}: {exc}"))
    return outcomes
