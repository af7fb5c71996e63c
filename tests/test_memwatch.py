"""The sweep's memory probe (``benchmark.memwatch``): a fake /proc with hand-made numbers, a real
child process, and the report's line built from hand-made invocations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmark import memwatch
from benchmark.memwatch import TreeMemory, descendants, pss_bytes, tree_pss
from benchmark.report.provenance import sweep_memory_text


def fake_proc(tmp_path: Path, tree: dict[int, tuple[int, str, int | None]]) -> Path:
    """``pid -> (ppid, command name, PSS kB or None for no smaps_rollup)`` as a /proc folder."""
    for pid, (ppid, name, pss) in tree.items():
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} ({name}) S {ppid} 1 1 0 -1\n")
        if pss is not None:
            (d / "smaps_rollup").write_text(f"Rss:  {2 * pss} kB\nPss:  {pss} kB\nShared: 0 kB\n")
    (tmp_path / "self").mkdir()
    return tmp_path


def test_the_tree_is_found_through_parent_links_even_with_odd_command_names(tmp_path):
    proc = fake_proc(
        tmp_path,
        {
            10: (1, "python", 1000),
            11: (10, "a (worker) 1", 2000),  # parentheses and spaces in the command name
            12: (11, "helper", None),  # ended or unreadable: not counted
            13: (10, "worker 2", 3000),
            20: (1, "someone else", 99999),
        },
    )
    assert sorted(descendants(10, proc)) == [10, 11, 12, 13]
    assert pss_bytes(11, proc) == 2000 * 1024
    assert pss_bytes(12, proc) is None
    # 1000 + 2000 + 3000 kB over three readable processes; pid 20 is outside the tree
    assert tree_pss(10, proc) == (6000 * 1024, 3)


@pytest.mark.skipif(not memwatch.supported(), reason="no /proc/self/smaps_rollup (not Linux)")
def test_a_child_that_holds_memory_raises_the_peak_by_about_what_it_holds():
    hold = 200 * 2**20
    code = (
        "import sys, time\n"
        f"b = bytearray({hold})\n"
        "for i in range(0, len(b), 4096): b[i] = 1\n"  # touch every page
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    with TreeMemory(interval=60.0) as memory:  # the thread samples once, then waits a minute
        memory.sample()
        before = memory.peak_bytes
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            memory.sample()
        finally:
            child.kill()
            child.wait()
    assert before is not None and memory.peak_bytes is not None
    assert memory.processes >= 2 and memory.samples >= 2
    assert memory.peak_bytes - before >= 0.9 * hold
    summary = memory.summary()
    assert summary["peak_pss_bytes"] == memory.peak_bytes and summary["interval_seconds"] == 60.0


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval must be > 0"):
        TreeMemory(interval=0)


def invocation(peak: int | None, ran: int, started: str) -> dict:
    mem = {"peak_pss_bytes": peak, "processes_at_peak": 3, "interval_seconds": 2.0}
    return {"started": started, "ran_now": ran, "memory": mem}


def test_the_report_states_the_largest_peak_of_the_invocations_that_measured_it():
    meta = {
        "invocations": [
            {"started": "t0", "ran_now": 900},  # written before the probe existed
            invocation(3_300_000_000, 1126, "t1"),
            invocation(1_000_000_000, 40, "t2"),
        ]
    }
    text = sweep_memory_text(meta)
    assert text is not None
    assert "peak 3.30 GB (3.07 GiB) summed over 3 processes of this machine" in text
    assert "started t1 that ran 1126 runs, the largest of the 2 invocations" in text
    assert text.endswith("; 1 other invocation (900 runs) did not measure it")
    assert sweep_memory_text({"invocations": [{"started": "t0"}]}) is None
    assert sweep_memory_text({}) is None


def test_without_proc_nothing_is_sampled_and_nothing_raises(tmp_path, monkeypatch):
    assert descendants(5, tmp_path / "no-proc") == [5]
    monkeypatch.setattr(memwatch, "supported", lambda proc=memwatch.PROC: False)
    with TreeMemory(interval=0.01) as memory:
        memory.sample()
    assert memory.peak_bytes is None and memory.samples == 0
    assert memory.summary()["peak_pss_bytes"] is None


@pytest.mark.skipif(not memwatch.supported(), reason="no /proc/self/smaps_rollup (not Linux)")
def test_samples_from_two_threads_keep_a_consistent_peak():
    import threading

    memory = TreeMemory(interval=60.0)
    threads = [threading.Thread(target=lambda: [memory.sample() for _ in range(5)]) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    summary = memory.summary()
    assert summary["samples"] == 10 and summary["peak_pss_bytes"] > 0
    assert summary["processes_at_peak"] >= 1 and summary["sampler_cpu_seconds"] >= 0
