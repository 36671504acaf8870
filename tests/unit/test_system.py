import os
import subprocess
import sys
import threading
import time

import pytest

from quantization.system import cpu_affinity, cpu_seconds, parse_cpu_list, resident_bytes, set_batch_scheduling

SPIN_IN_TWO_THREADS = """
import threading
def spin():
    while True:
        pass
threading.Thread(target=spin, daemon=True).start()
spin()
"""


def test_cpu_seconds_and_memory_of_another_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", SPIN_IN_TWO_THREADS])
    try:
        time.sleep(1.0)
        used = cpu_seconds(child.pid)
        assert used is not None
        assert 0.3 < used < 3.0  # two threads (sharing the GIL) for about a second
        assert resident_bytes(child.pid) > 1_000_000
    finally:
        child.kill()
        child.wait()
    assert cpu_seconds(child.pid) is None  # gone
    assert resident_bytes(child.pid) is None


def test_release_free_heap_returns_freed_pages_to_the_os() -> None:
    """Freed blocks below the heap's last live one stay resident until trimmed (what a model's load leaves)."""
    import torch

    from quantization.system import release_free_heap

    blocks = [torch.ones(16 * 1024) for _ in range(1000)]  # 64 KB each: heap, not mmap; 64 MB in all
    last = blocks.pop()
    del blocks
    before = resident_bytes()
    assert release_free_heap()
    assert resident_bytes() < before - 32 * 1024 * 1024
    assert last.sum() == 16 * 1024


def test_parse_cpu_list_reads_taskset_lists() -> None:
    assert parse_cpu_list("0") == {0}
    assert parse_cpu_list("0-2,5") == {0, 1, 2, 5}
    with pytest.raises(ValueError, match="not a CPU list"):
        parse_cpu_list("0-")
    with pytest.raises(ValueError, match="not a CPU list"):
        parse_cpu_list("3-1")
    with pytest.raises(ValueError, match="not a CPU list"):
        parse_cpu_list("a")


def test_cpu_affinity_pins_the_thread_and_its_new_threads_then_restores() -> None:
    before = os.sched_getaffinity(0)
    cpu = min(before)
    seen: list[set[int]] = []
    with cpu_affinity(frozenset({cpu})):
        assert os.sched_getaffinity(0) == {cpu}
        thread = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        thread.start()
        thread.join()
    assert seen == [{cpu}]
    assert os.sched_getaffinity(0) == before
    with cpu_affinity(None):
        assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")
def test_batch_scheduling_applies_to_the_thread_and_the_processes_it_starts() -> None:
    seen: dict[str, object] = {}

    def in_a_thread() -> None:  # a thread of its own: pytest's thread keeps its policy whatever happens
        assert set_batch_scheduling(True)
        seen["thread"] = os.sched_getscheduler(0)
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"], capture_output=True, text=True
        )
        seen["child"] = int(child.stdout)
        assert set_batch_scheduling(False)
        seen["after"] = os.sched_getscheduler(0)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert seen == {"thread": os.SCHED_BATCH, "child": os.SCHED_BATCH, "after": os.SCHED_OTHER}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_cpu_kernel_flags_are_read_from_cpuinfo() -> None:
    from quantization.system import cpu_kernel_flags, cpu_model_name

    cpuinfo = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_int8 sse4_2\n"
    assert cpu_kernel_flags(cpuinfo) == ["amx_int8", "avx512_vnni", "avx512f", "avx2"]
    assert cpu_model_name(cpuinfo) == "Some CPU"
    assert cpu_kernel_flags("processor\t: 0\n") == []
