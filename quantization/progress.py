"""One progress display for a catalog build: a single bar on a terminal, plain log lines anywhere else."""

from __future__ import annotations

import logging
import sys
import time
from typing import IO

from tqdm import tqdm

from quantization.catalog_build import FINISHED_STATES, BuildEvent

logger = logging.getLogger("qbert.build")


def _step(event: BuildEvent) -> str:
    where = f"{event.task}/{event.precision}"
    if event.state == "built":
        metrics = ", ".join(f"{row['metric']}={row['value']:.4f}" for row in event.accuracy)
        return f"{where} {event.detail or 'built'}" + (f" ({metrics})" if metrics else "")
    if event.state in ("failed", "skipped"):
        return f"{where} {event.state}: {event.detail}"
    count = f" {event.done}/{event.total} {event.unit}" if event.total else ""
    return f"{where} {event.state}{count}"


class BuildProgress:
    """Feeds on `BuildEvent`s: artifacts done of all, the current step, and the time left.

    The estimate counts only artifacts that had work to do: one found up to date takes no time and would make
    the rest look instant.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.worked_s = 0.0
        self.worked = 0  # artifacts built or evaluated here, not found up to date
        self.job_started = self.started
        self.bar: tqdm | None = None
        self._last: tuple[str, str, str] | None = None

    def eta_s(self, event: BuildEvent) -> float | None:
        if not self.worked:
            return None
        return self.worked_s / self.worked * (event.jobs_total - event.jobs_done - (event.state in FINISHED_STATES))

    def __call__(self, event: BuildEvent) -> None:
        now = time.monotonic()
        if (event.task, event.precision) != (self._last or ("", "", ""))[:2]:
            self.job_started = now
        finished = event.state in FINISHED_STATES
        if event.state in ("built", "failed") and event.detail != "up to date":
            self.worked += 1
            self.worked_s += now - self.job_started
        if self.stream.isatty():
            self._draw(event, finished)
        elif (event.task, event.precision, event.state) != self._last:  # a new step, not every advance within one
            eta = self.eta_s(event)
            left = f", ≈{eta:.0f} s left" if eta is not None else ""
            logger.info(
                "build %d/%d: %s (%.0f s%s)",
                event.jobs_done + finished,
                event.jobs_total,
                _step(event),
                now - self.started,
                left,
            )
        self._last = (event.task, event.precision, event.state)

    def _draw(self, event: BuildEvent, finished: bool) -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=event.jobs_total,
                desc="build",
                unit="artifact",
                file=self.stream,
                bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| {elapsed}<{postfix}",
            )
        self.bar.n = event.jobs_done + finished
        eta = self.eta_s(event)
        self.bar.set_postfix_str(f"{'?' if eta is None else f'{eta:.0f}s'} left · {_step(event)}", refresh=True)
        if event.state == "failed":
            self.bar.write(_step(event), file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
