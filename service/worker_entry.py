"""The worker process's entry point, importable without torch: the pool (API process) names it as the target of
the processes it spawns, and the API process never loads torch, transformers or a model itself."""

from __future__ import annotations

from multiprocessing.connection import Connection

from service.protocol import WorkerProgress, WorkerSpec


def run_worker(spec: WorkerSpec, inbox: Connection, outbox: Connection) -> None:
    # First word before the heavy imports (seconds on a cold disk): the pool's start timeout runs from here.
    outbox.send(WorkerProgress(spec.index, "", "", "starting"))
    from service.worker import worker_main

    worker_main(spec, inbox, outbox)
