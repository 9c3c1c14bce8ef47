"""`rpo-jax bench` reads each process's own peak memory: a child started by a large parent (TRL's benchmark
process, a sweep point) must not report the parent's peak, which `ru_maxrss` does on Linux (kept across fork/exec)."""

import json
import subprocess
import sys

from benchmarks import workload

CHILD = (
    "import json, resource; from benchmarks import trl_step, workload; "
    "print(json.dumps([workload.peak_rss_bytes(), trl_step._peak_rss(), "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]))"
)


def test_child_peak_is_its_own_not_the_parents():
    grown = 768 * 2**20
    ballast = bytearray(grown)
    for i in range(0, grown, 4096):  # touch every page so it is resident
        ballast[i] = 1
    parent_peak = workload.peak_rss_bytes()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=workload.REPO, capture_output=True, text=True, check=True, timeout=120
    )
    del ballast
    ours, trl_side, inherited = json.loads(proc.stdout)
    assert parent_peak >= grown
    # The premise: ru_maxrss of the child carries the parent's peak (if a kernel stops doing that, this is moot).
    assert inherited >= grown
    # The child imports numpy/yaml/rpo_jax.config.schema only: far below the parent's ballast.
    assert ours < grown / 2 and trl_side < grown / 2, (ours, trl_side, parent_peak)
    assert abs(ours - trl_side) < 64 * 2**20


def test_vm_hwm_parsing():
    status = "Name:\tpython\nVmPeak:\t  900 kB\nVmHWM:\t  1234 kB\nVmRSS:\t  1000 kB\n"
    assert workload.vm_hwm_bytes(status) == 1234 * 1024
    assert workload.peak_rss_bytes() >= workload.current_rss_bytes() > 0
