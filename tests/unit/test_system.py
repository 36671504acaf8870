import os
import threading

import pytest

from quantization.system import cpu_affinity, parse_cpu_list, resident_bytes


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


def test_cpu_kernel_flags_are_read_from_cpuinfo() -> None:
    from quantization.system import cpu_kernel_flags, cpu_model_name

    cpuinfo = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_int8 sse4_2\n"
    assert cpu_kernel_flags(cpuinfo) == ["amx_int8", "avx512_vnni", "avx512f", "avx2"]
    assert cpu_model_name(cpuinfo) == "Some CPU"
    assert cpu_kernel_flags("processor\t: 0\n") == []


def test_cpu_identity_names_the_generation_and_the_caches(tmp_path) -> None:
    from quantization.system import cpu_identity

    cpuinfo = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
        "stepping\t: 1\n\nprocessor\t: 1\nvendor_id\t: Other\n"
    )
    for index, (level, kind, size) in enumerate(
        [("1", "Data", "32K"), ("1", "Instruction", "32K"), ("2", "Unified", "1024K")]
    ):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(value + "\n")
    assert cpu_identity(cpuinfo, tmp_path) == "AuthenticAMD family 25 model 17 stepping 1; L1d 32K, L2 1024K"
    assert cpu_identity("", tmp_path / "absent") == ""
