"""What every command shares: results on stdout (progress and logs go to stderr), torch threads."""

from __future__ import annotations

import sys


def emit(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
