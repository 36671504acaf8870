"""What the operating system says about a process (Linux /proc; None elsewhere), and a few things we ask of it."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def resident_bytes(pid: int | str = "self") -> int | None:
    """Resident set size of a process (None where unavailable or the process is gone)."""
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return None
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


# The CPU features that decide which kernels run: int8 dot products (AMX, VNNI), bf16, and the vector width.
KERNEL_FLAGS = ("amx_int8", "amx_bf16", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512f", "avx2")


def _first_cpu(cpuinfo: str | None) -> dict[str, str]:
    """The first processor's fields in `cpuinfo`, else in Linux's /proc/cpuinfo (none elsewhere)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # a blank line ends the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_kernel_flags(cpuinfo: str | None = None) -> list[str]:
    """Which of `KERNEL_FLAGS` this CPU reports (Linux /proc/cpuinfo; empty elsewhere)."""
    flags = set(_first_cpu(cpuinfo).get("flags", "").split())
    return [flag for flag in KERNEL_FLAGS if flag in flags]


def cpu_model_name(cpuinfo: str | None = None) -> str:
    return _first_cpu(cpuinfo).get("model name", "")


# /proc/cpuinfo's keys that name a CPU's generation where its model name does not: a virtual machine may report
# only "AMD EPYC" for parts whose vector units differ (Zen 4 runs 512-bit instructions in two halves, Zen 5 does not)
CPU_ID_KEYS = ("vendor_id", "cpu family", "model", "stepping")


def cpu_identity(cpuinfo: str | None = None, caches: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> str:
    """The first CPU's vendor, family, model and stepping, and its caches as sysfs lists them, in one line
    ("AuthenticAMD family 25 model 17 stepping 1; L1d 32K, L2 1024K, L3 32768K"); empty where unknown."""
    fields = _first_cpu(cpuinfo)
    named = " ".join(
        f"{label} {fields[key]}" if label else fields[key]
        for key, label in zip(CPU_ID_KEYS, ("", "family", "model", "stepping"), strict=True)
        if key in fields
    )
    levels = []
    for index in sorted(caches.glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            levels.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    return "; ".join(part for part in (named, ", ".join(levels)) if part)


def cpu_seconds(pid: int | str = "self") -> float | None:
    """User + system CPU time of a process, all its threads (None where unavailable or the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def release_free_heap() -> bool:
    """Hand the heap's free pages back to the OS (glibc `malloc_trim`); False where there is no glibc.

    Loading a model frees large temporaries (unpacked codes, the row-major matrix once packed) that glibc keeps
    mapped: without this a loaded model's RSS varies from load to load by a fifth of its size (README, bench).
    """
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: libc is loaded already
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    malloc_trim(0)
    return True


def parse_cpu_list(text: str) -> frozenset[int]:
    """`0-2,5` (taskset's and the kernel's CPU-list format) as {0, 1, 2, 5}."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()) or int(last or first) < int(first):
            raise ValueError(f"not a CPU list: {text!r} (e.g. 0-2,5)")
        cpus.update(range(int(first), int(last or first) + 1))
    return frozenset(cpus)


@contextmanager
def cpu_affinity(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the calling thread (and the threads it starts meanwhile) on `cpus`, then restore its affinity.

    None leaves the affinity alone. Threads started inside keep `cpus`, which is what a thread pool made for the
    work inside should do.
    """
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def set_batch_scheduling(enabled: bool) -> bool:
    """Make the calling thread a batch (`SCHED_BATCH`) or a normal (`SCHED_OTHER`) task; False where unsupported.

    A batch task's wakeups do not preempt the task running on its core. Processes it starts inherit the policy.
    """
    policy = getattr(os, "SCHED_BATCH" if enabled else "SCHED_OTHER", None)
    if policy is None or not hasattr(os, "sched_setscheduler"):  # not Linux
        return False
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError:  # a sandbox that refuses the call
        return False
    return True
