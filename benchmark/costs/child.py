"""Extra peak memory of one fit, measured in a fresh process (CPU) or in process (CUDA).

On a CPU, a child process (``python -m benchmark.costs --child SPEC``, see
``benchmark/costs/__main__.py``) loads the data and the network, warms autograd on two inputs,
resets the kernel's high-water mark by writing ``5`` to ``/proc/self/clear_refs``, reads
``VmRSS`` from ``/proc/self/status``, makes the one call, and reads ``VmHWM``; extra = VmHWM
after - VmRSS before (``measure.proc_peak``). A fresh process per row: what an earlier call left
allocated does not hide the next one's peak. On CUDA: ``torch.cuda.max_memory_allocated`` in
process (``measure.cuda_peak``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import estimators

from .measure import cuda_peak, is_cuda, proc_memory_unsupported, proc_peak
from .workloads import (
    bn_count,
    floor_pass,
    load_data,
    naive_diagonal,
    naive_inputs,
    timed_options,
    tutorial_network,
)

CHILD_MODULE = "benchmark.costs"
"""What ``python -m`` runs in the child (its ``__main__``)."""
CHILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class ChildSpec:
    """What one memory-measuring child process fits: ``kind`` is estimator, floor or naive.

    ``name`` is the estimator and ``options`` a variant's options (``costs.variants``).
    """

    kind: str
    n: int
    n_loaded: int
    name: str = ""
    threads: int | None = None
    data_root: str | None = None
    synthetic: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def child_workload(
    spec: ChildSpec, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> Callable[[], Any]:
    """The call whose extra peak memory a child measures."""
    x, y = inputs[: spec.n], targets[: spec.n]
    if spec.kind == "floor":
        return lambda: floor_pass(model, x, y)
    if spec.kind == "naive":
        m = naive_inputs(spec.n)
        return lambda: naive_diagonal(model, x[:m], y[:m])
    est = estimators.make(spec.name, **timed_options(spec.name, spec.options))
    return lambda: est.fit(model, x, y)


def run_child(spec: ChildSpec) -> dict[str, Any]:
    """In the child: load data and model, warm autograd on two inputs, measure one call."""
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    inputs, targets = load_data(spec.n_loaded, spec.data_root, spec.synthetic)
    model = tutorial_network(inputs[: bn_count(spec.n_loaded)], "cpu")
    floor_pass(model, inputs[:2], targets[:2])
    fn = child_workload(spec, model, inputs, targets)
    reason = proc_memory_unsupported()
    if reason is not None:
        return {"extra_bytes": None, "reason": reason}
    try:
        return proc_peak(fn)
    except Exception as err:
        return {"extra_bytes": None, "reason": f"the fit failed: {type(err).__name__}: {err}"}


def child_command(spec: ChildSpec) -> list[str]:
    """The command line that runs ``spec`` in a fresh interpreter."""
    return [sys.executable, "-m", CHILD_MODULE, "--child", json.dumps(asdict(spec))]


def measure_in_child(spec: ChildSpec, timeout_s: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """Run ``spec`` in a fresh subprocess; its last stdout line is the JSON result."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(
            child_command(spec),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=root,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"extra_bytes": None, "reason": f"child timed out after {timeout_s:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"extra_bytes": None, "reason": f"child exited {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def memory_method(memory: bool, device: str) -> dict[str, Any]:
    """How extra peak memory is measured in a timing run, or why it is not."""
    if not memory:
        return {"method": "off", "reason": "not measured (--no-memory)"}
    if is_cuda(device):
        return {"method": "cuda", "reason": None}
    reason = proc_memory_unsupported()
    if reason is not None:
        return {"method": "n/a", "reason": reason}
    return {"method": "proc", "reason": None}


@dataclass(frozen=True)
class MemoryProbe:
    """Measures one row's extra peak memory the way ``memory_method`` chose.

    Attributes:
        method: ``memory_method``'s answer.
        n_loaded: inputs the run loaded (a child loads as many, for the same network).
        threads: torch threads of the run (the child sets the same).
        data_root: the run's datasets root.
        synthetic: the run uses synthetic inputs.
    """

    method: dict[str, Any]
    n_loaded: int
    threads: int | None = None
    data_root: str | None = None
    synthetic: bool = False

    def measure(
        self,
        kind: str,
        name: str,
        n: int,
        call: Callable[[], Any],
        options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Extra peak bytes of one call: ``call`` in process (CUDA), else a fresh child.

        ``name`` and ``options``: the estimator and a variant's options (``kind`` estimator).
        """
        how = self.method["method"]
        if how == "cuda":
            try:
                return cuda_peak(call)
            except Exception as err:
                return {"extra_bytes": None, "reason": f"{type(err).__name__}: {err}"}
        if how != "proc":
            return {"extra_bytes": None, "reason": self.method["reason"]}
        spec = ChildSpec(
            kind=kind,
            n=n,
            n_loaded=self.n_loaded,
            name=name,
            threads=self.threads,
            data_root=self.data_root,
            synthetic=self.synthetic,
            options=dict(options or {}),
        )
        return measure_in_child(spec)
