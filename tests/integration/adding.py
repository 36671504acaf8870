"""`qbert add` as the tests call it: the CLI's own entry point, in this process (a subprocess per model would import
torch each time)."""

from __future__ import annotations

import pytest

ADD_ENVIRONMENT = ("QBERT_USER_CATALOG", "QBERT_ARTIFACTS", "QBERT_PLANS")


def run_add(env: dict[str, str], name: str, kind: str, *options: str) -> int:
    """`qbert add NAME --kind KIND OPTIONS…` with `env`'s catalog, artifacts and plans folders (and hub setting): its
    exit status."""
    from quantization.cli.main import main

    with pytest.MonkeyPatch.context() as patch:
        for key in (*ADD_ENVIRONMENT, "HF_HUB_OFFLINE"):
            if key in env:
                patch.setenv(key, env[key])
        return main(["add", name, "--kind", kind, *options])


def add_model(env: dict[str, str], name: str, kind: str, *options: str) -> None:
    """`run_add`, which must succeed."""
    assert run_add(env, name, kind, *options) == 0
