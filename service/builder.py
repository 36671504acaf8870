"""The catalog builder: a process of its own that builds missing or stale artifacts while the service serves.

Building runs outside the API process: its checkpoints, calibration and evaluation memory go when it exits, and
the API process never imports torch. Its `BuildEvent`s come back over a pipe, read on the event loop like the
workers' messages; each artifact joins the pool as soon as it is built and evaluated.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from quantization.catalog_build import BuildEvent, BuildJob

logger = logging.getLogger("qbert.builder")


def build_main(jobs: tuple[BuildJob, ...], root: Path, threads: int, outbox: Connection) -> None:
    """Process entry point: build `jobs` in order, sending every `BuildEvent` to `outbox`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service stops the builder; Ctrl-C goes to the parent
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s builder: %(message)s")
    # A background job on the cores that serve: the workers' threads go first whenever they have work (nice 19),
    # and the builder's idle OpenMP threads sleep rather than spin on a core a worker needs (read at torch import).
    os.nice(19)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import torch

    from quantization.catalog import load_catalog
    from quantization.catalog_build import build_catalog

    torch.set_num_threads(threads)
    build_catalog(load_catalog(), list(jobs), root, outbox.send)


class CatalogBuilder:
    """Runs `build_main` in a spawned process and hands each event to `on_event` on the event loop's thread.

    `on_exit(code)` is called once when the process is gone, whether it finished (0) or died.
    """

    def __init__(
        self,
        jobs: list[BuildJob],
        root: Path,
        threads: int,
        on_event: Callable[[BuildEvent], None],
        on_exit: Callable[[int | None], None],
    ) -> None:
        self.jobs, self.root, self.threads = jobs, root, threads
        self.on_event, self.on_exit = on_event, on_exit
        self._process: BaseProcess | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        reader, writer = context.Pipe(duplex=False)
        self._process = context.Process(
            target=build_main,
            args=(tuple(self.jobs), self.root, self.threads, writer),
            name="qbert-builder",
            daemon=True,
        )
        self._process.start()
        writer.close()  # the child's end: closing ours lets EOF tell us when the child is gone
        self._loop.add_reader(reader.fileno(), self._read, reader)

    def _read(self, reader: Connection) -> None:
        assert self._loop is not None
        try:
            while reader.poll():
                self.on_event(reader.recv())
        except (EOFError, OSError):
            self._loop.remove_reader(reader.fileno())
            reader.close()
            assert self._process is not None
            self._process.join(timeout=5)
            self.on_exit(self._process.exitcode)

    async def close(self, grace_s: float = 5.0) -> None:
        process = self._process
        if process is None or not process.is_alive():
            return
        process.terminate()
        await asyncio.to_thread(process.join, grace_s)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join, grace_s)
