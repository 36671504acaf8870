"""The CPU quota a container's cgroup sets, read from sample cgroup v1 and v2 trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cgroup import cgroup_cpu_limit, quota_cpus

pytestmark = pytest.mark.unit


def _files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _v2(tmp_path: Path, files: dict[str, str], self_path: str = "/") -> int | None:
    root = _files(tmp_path / "cgroup", {"cgroup.controllers": "cpuset cpu io memory pids\n", **files})
    proc = _files(tmp_path, {"self-cgroup": f"0::{self_path}\n"}) / "self-cgroup"
    return cgroup_cpu_limit(root, proc)


def _v1(tmp_path: Path, files: dict[str, str], self_path: str = "/", controller: str = "cpu,cpuacct") -> int | None:
    root = _files(tmp_path / "cgroup", {f"{controller}/{name}": text for name, text in files.items()})
    lines = f"12:memory:{self_path}\n4:{controller}:{self_path}\n1:name=systemd:{self_path}\n"
    proc = _files(tmp_path, {"self-cgroup": lines}) / "self-cgroup"
    return cgroup_cpu_limit(root, proc)


def test_whole_cpus_round_down_and_never_below_one() -> None:
    assert quota_cpus(200_000, 100_000) == 2
    assert quota_cpus(250_000, 100_000) == 2  # 2.5 CPUs: a third thread would be throttled half the time
    assert quota_cpus(50_000, 100_000) == 1


def test_cgroup_v2_limit_and_no_limit(tmp_path: Path) -> None:
    assert _v2(tmp_path / "a", {"cpu.max": "200000 100000\n"}) == 2
    assert _v2(tmp_path / "b", {"cpu.max": "max 100000\n"}) is None
    assert _v2(tmp_path / "c", {}) is None  # the root cgroup has no cpu.max


def test_cgroup_v2_tightest_quota_along_the_path(tmp_path: Path) -> None:
    files = {
        "kubepods.slice/cpu.max": "800000 100000\n",
        "kubepods.slice/pod1/cpu.max": "300000 100000\n",
        "kubepods.slice/pod1/ctr/cpu.max": "max 100000\n",
    }
    assert _v2(tmp_path, files, "/kubepods.slice/pod1/ctr") == 3


def test_cgroup_v1_limit_and_unlimited(tmp_path: Path) -> None:
    limited = {"cpu.cfs_quota_us": "150000\n", "cpu.cfs_period_us": "100000\n"}
    assert _v1(tmp_path / "a", limited) == 1
    assert _v1(tmp_path / "b", {"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n"}) is None
    assert _v1(tmp_path / "c", {"cpu.cfs_quota_us": "400000\n", "cpu.cfs_period_us": "100000\n"}, controller="cpu") == 4


def test_cgroup_v1_nested_path(tmp_path: Path) -> None:
    files = {
        "docker/abc/cpu.cfs_quota_us": "200000\n",
        "docker/abc/cpu.cfs_period_us": "100000\n",
        "cpu.cfs_quota_us": "-1\n",
        "cpu.cfs_period_us": "100000\n",
    }
    assert _v1(tmp_path, files, "/docker/abc") == 2


def test_nothing_readable_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path / "absent", tmp_path / "absent-self") is None
