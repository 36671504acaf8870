"""The published OpenAPI contract against a live `qbert serve`: schemathesis with every check, over every operation.

A request the schema allows must be taken (2xx, or an answer the schema documents), one it forbids must be refused,
and every response must match its documented status, content type, headers and body. Seeded, so that CI explores
the same cases each run; a failure prints schemathesis's own report, with a `curl` line that reproduces each case.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.server import RunningServer, start_server

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
MIN_CASES = 1000  # the contract is checked on at least this many generated requests
EXAMPLES_PER_OPERATION = 400  # fuzzing phase, per operation: 7 operations give ≈1,370 cases in ≈35 s on 2 cores
RUN_TIMEOUT_S = 300

pytestmark = pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis is a dev dependency: make install")


@pytest.fixture(scope="module")
def server(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("contract") / "serve.log"
    running = start_server(tiny_artifacts, log, max_wait_ms="5", default_precision="w8")
    yield running
    assert running.stop() in (0, -signal.SIGTERM), log.read_text()


def test_the_live_service_keeps_its_openapi_contract(server: RunningServer, tmp_path: Path) -> None:
    report = tmp_path / "schemathesis.json"
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{server.url}/openapi.json",
        "--checks=all",
        f"--max-examples={EXAMPLES_PER_OPERATION}",
        "--seed=1",
        "--no-color",
        "--report=json",
        f"--report-json-path={report}",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    result = json.loads(report.read_text())
    cases, operations = result["test_cases"], result["operations"]
    assert result["complete"], output
    assert result["stop_reason"] == "completed", output
    assert operations["tested"] == operations["total"] >= 7, operations
    assert operations["errored"] == 0, output
    assert cases["errored"] == 0, output
    assert cases["generated"] >= MIN_CASES, cases
    assert cases["with_failures"] == 0, output
    assert not result["failures"], output
