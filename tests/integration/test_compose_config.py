"""docker-compose.yml as Docker Compose itself reads it, where a Compose CLI exists (it is run as a process)."""

import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT
from tests.deployment import COMPOSE_FILE


def test_docker_compose_config_accepts_the_file_where_a_cli_exists() -> None:
    commands = []
    if shutil.which("docker"):
        commands.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        commands.append(["docker-compose"])
    for command in commands:
        version = subprocess.run([*command, "version"], capture_output=True, text=True)
        if version.returncode == 0:
            checked = subprocess.run(
                [*command, "-f", str(COMPOSE_FILE), "config", "--quiet"], capture_output=True, text=True, cwd=REPO_ROOT
            )
            assert checked.returncode == 0, checked.stderr
            return
    pytest.skip("no Docker Compose CLI here (`docker compose` plugin or `docker-compose`); the YAML checks above ran")
