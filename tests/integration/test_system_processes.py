"""What the OS says of, and what we ask of, other processes: these tests start child processes."""

import os
import subprocess
import sys
import threading
import time

import pytest

from quantization.system import cpu_seconds, resident_bytes, set_batch_scheduling

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
