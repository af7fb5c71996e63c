"""Write ``tests/data/records_sample/``: a small, hand-made but plausible set of run records.

The report's golden test (``tests/test_report.py``) builds its report from these files. Run
``.venv/bin/python tests/data/make_records_sample.py`` after a change of the record schema or
``RunConfig``, then regenerate the golden files (``EWC_BENCH_UPDATE_GOLDEN=1``) and review the
diff. Deterministic: the same code writes the same bytes.

Contents:

Seed 0 is the selection seed (nested selection: it is never a test seed); the test seeds are
1-3 (1-6 on permuted-mnist).

- ``mnist-fmnist`` (the tutorial's pair), BatchNorm ``freeze`` and ``update``: baseline and joint
  on test seeds 1-3; l2, ewc diag-exact and ewc kfac-exact on three lambdas with seed 0 and test
  seeds 1-3 at the lambda that wins on validation; one extra l2 run at a lambda that loses; ewc
  kfac-exact diverges at its largest lambda (bn freeze, seed 0: it must never be chosen) and on
  seed 1 at its chosen lambda (bn update: counted and excluded).
- ``permuted-mnist`` with 3 tasks (bn freeze): baseline on seeds 1-6, ewc diag-exact on two
  lambdas with seed 0 then seeds 1-6 (6 pairs), ewc-online diag-exact (gamma 0.9) on two lambdas
  with seed 0 then seeds 1-2, joint on seeds 1-3.
- ``sweep.json`` (experiment metadata) and ``pipeline.json`` (data-pipeline epoch timing).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmark.config import RESULTS_VERSION, RunConfig  # noqa: E402
from benchmark.records import RunRecord, write_record  # noqa: E402
from benchmark.selection import choose_lambdas, group_key  # noqa: E402

OUT = Path(__file__).resolve().parent / "records_sample"
GIT_SHA = "0123abcd4567ef890123abcd4567ef890123abcd"
MACHINE = {
    "platform": "Linux-6.1-x86_64-with-glibc2.36",
    "cpu": "Example EPYC 7000",
    "cores": 2,
    "torch_threads": 2,
    "omp_num_threads": "2",
    "python": "3.11.7",
    "torch": "2.14.1",
    "device": "cpu",
}
COMMAND = "python -m benchmark sweep --experiment sample --out results/sample"

# Test accuracy on task j after task i; for mnist-fmnist: (R00, R01, R10, R11).
MNIST_FMNIST: dict[tuple[str, str], dict[float, tuple[float, float, float, float] | None]] = {
    ("freeze", "baseline"): {0.0: (0.9778, 0.0812, 0.2469, 0.8690)},
    ("freeze", "l2"): {
        0.01: (0.9778, 0.0812, 0.4200, 0.8620),
        0.1: (0.9778, 0.0812, 0.7400, 0.8350),
        1.0: (0.9778, 0.0812, 0.9000, 0.5500),
    },
    ("freeze", "diag-exact"): {
        100.0: (0.9778, 0.0812, 0.9000, 0.8500),
        1000.0: (0.9778, 0.0812, 0.9620, 0.8340),
        10000.0: (0.9778, 0.0812, 0.9750, 0.7600),
    },
    ("freeze", "kfac-exact"): {
        100.0: (0.9778, 0.0812, 0.9300, 0.8450),
        1000.0: (0.9778, 0.0812, 0.9680, 0.8380),
        10000.0: None,  # diverges on the selection seed: never chosen
    },
    ("update", "baseline"): {0.0: (0.9778, 0.0812, 0.1792, 0.8703)},
    ("update", "l2"): {
        0.01: (0.9778, 0.0812, 0.2500, 0.8650),
        0.1: (0.9778, 0.0812, 0.3800, 0.8400),
        1.0: (0.9778, 0.0812, 0.4500, 0.7000),
    },
    ("update", "diag-exact"): {
        100.0: (0.9778, 0.0812, 0.4500, 0.8500),
        1000.0: (0.9778, 0.0812, 0.5200, 0.8450),
        10000.0: (0.9778, 0.0812, 0.5500, 0.7800),
    },
    ("update", "kfac-exact"): {
        100.0: (0.9778, 0.0812, 0.5000, 0.8500),
        1000.0: (0.9778, 0.0812, 0.6000, 0.8400),
        10000.0: (0.9778, 0.0812, 0.6200, 0.7400),
    },
}
JOINT_MNIST_FMNIST = {"freeze": (0.9750, 0.8720), "update": (0.9740, 0.8740)}
CHOSEN = {"l2": 0.1, "diag-exact": 1000.0, "kfac-exact": 1000.0}

# permuted-mnist, 3 tasks: (R10, R20, R21) and the diagonal (R00, R11, R22); above it: chance.
PERMUTED: dict[str, dict[float, tuple[tuple[float, float, float], tuple[float, float, float]]]] = {
    "baseline": {0.0: ((0.8000, 0.6200, 0.8200), (0.9700, 0.9710, 0.9720))},
    "diag-exact": {
        100.0: ((0.9000, 0.8500, 0.9000), (0.9700, 0.9650, 0.9640)),
        1000.0: ((0.9500, 0.9300, 0.9500), (0.9700, 0.9600, 0.9550)),
    },
    "online": {
        100.0: ((0.9300, 0.9000, 0.9300), (0.9700, 0.9620, 0.9600)),
        1000.0: ((0.9600, 0.9500, 0.9550), (0.9700, 0.9100, 0.8800)),
    },
}
PERMUTED_CHOSEN = {"diag-exact": 1000.0, "online": 100.0}
JOINT_PERMUTED = (0.9650, 0.9620, 0.9600)

# Cost per task: (estimate seconds, curvature bytes, penalty ms per step).
COST = {
    "baseline": (0.0, 0, None),
    "joint": (0.0, 0, None),
    "l2": (0.0002, 0, 0.08),
    "diag-exact": (0.12, 360040, 0.12),
    "kfac-exact": (0.19, 2631708, 0.95),
    "online": (0.12, 360040, 0.12),
}
TRACE = {"l2": 90010.0, "diag-exact": 41.0, "kfac-exact": 23.0, "online": 41.0}
"""tr(F) of a fitted curvature per method (l2: P of the tutorial network), before noise."""


def noise(*key: Any) -> float:
    """A deterministic pseudo-random number in [-1, 1) from ``key``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**63 - 1.0


def acc(value: float, *key: Any, scale: float = 0.006) -> float:
    """``value`` plus seeded noise, clipped to [0, 1], rounded to 4 decimals."""
    return round(min(1.0, max(0.0, value + scale * noise(*key))), 4)


def jitter(
    matrix: list[list[float | None]], *key: Any, first_row: tuple[Any, ...] | None = None
) -> list[list[float | None]]:
    """Seed-to-seed variation of every cell.

    ``first_row`` keys the noise of row 0 on its own: every method trains task 1 alike, so for
    one seed its row 0 is the same whatever the method, lambda or BatchNorm mode.
    """
    return [
        [
            None if v is None else acc(v, *(first_row if i == 0 and first_row else key), i, j)
            for j, v in enumerate(row)
        ]
        for i, row in enumerate(matrix)
    ]


def provenance(index: int) -> dict[str, Any]:
    """Provenance as the harness writes it: runs one minute apart on one machine."""
    minute = 10 + index
    return {
        **MACHINE,
        "git_sha": GIT_SHA,
        "results_version": RESULTS_VERSION,
        "command": COMMAND,
        "started": f"2026-01-02T{minute // 60 + 3:02d}:{minute % 60:02d}:00+00:00",
        "finished": f"2026-01-02T{minute // 60 + 3:02d}:{minute % 60:02d}:40+00:00",
    }


def make_record(
    config: RunConfig,
    tasks: list[str],
    test: list[list[float | None]],
    cost_key: str,
    diverged_at: int | None = None,
) -> RunRecord:
    """A record with validation = test + noise, and timings from ``COST`` (provenance later)."""
    T = len(tasks)
    rows = len(test)
    key = (config.sequence, config.bn, cost_key, config.lam, config.seed)
    val = [
        [None if v is None else acc(v, "val", *key, i, j, scale=0.004) for j, v in enumerate(r)]
        for i, r in enumerate(test)
    ]
    estimate, nbytes, penalty = COST[cost_key]
    train = [round(8.0 * rows / T * (1 + 0.05 * noise("train", *key, t)), 3) for t in range(rows)]
    if cost_key == "joint":
        train = [round(16.5 * (1 + 0.05 * noise("train", *key)), 3)]
    step = [round(1.70 * (1 + 0.03 * noise("step", *key, t)), 3) for t in range(len(train))]
    penalty_ms = [
        None
        if penalty is None or t == 0
        else round(penalty * (1 + 0.05 * noise("pen", *key, t)), 4)
        for t in range(len(train))
    ]
    estimates = [round(estimate * (1 + 0.05 * noise("est", *key, t)), 5) for t in range(len(train))]
    loss = [round(0.12 + 0.1 * t + 0.01 * noise("loss", *key, t), 4) for t in range(len(train))]
    status, message = "ok", None
    if diverged_at is not None:
        status = "diverged"
        message = f"training loss became nan in task {diverged_at + 1} (epoch 2)"
        for t in range(diverged_at, len(train)):
            train[t] = round(train[t] * 0.4, 3) if t == diverged_at else 0.0
            step[t] = None
            loss[t] = None
            estimates[t] = 0.0
    return RunRecord(
        run_id=config.run_id,
        config=config.to_dict(),
        status=status,
        message=message,
        tasks=tasks,
        acc_val=val,
        acc_test=test,
        train_seconds=train,
        estimate_seconds=estimates,
        eval_seconds=[round(0.3 * T, 3)] * len(train),
        curvature_bytes=[
            nbytes if status == "ok" or t < (diverged_at or 0) else 0 for t in range(len(train))
        ],
        curvature_trace=[
            round(TRACE[cost_key] * (1 + 0.1 * noise("trace", *key, t)), 4)
            if cost_key in TRACE and (status == "ok" or t < (diverged_at or 0))
            else None
            for t in range(len(train))
        ],
        step_ms=step,
        penalty_ms=penalty_ms,
        train_loss=loss,
        peak_rss_mb=round(410.0 + nbytes / 2**20 * 3 + 4 * noise("rss", *key), 1),
        total_seconds=round(sum(train) + sum(estimates) + 0.3 * T * len(train), 3),
    )


def mnist_fmnist_records() -> list[RunRecord]:
    """The tutorial pair, both BatchNorm modes."""
    records: list[RunRecord] = []
    tasks = ["mnist", "fmnist"]
    for bn in ("freeze", "update"):
        for method in ("baseline", "l2", "diag-exact", "kfac-exact", "joint"):
            if method == "joint":
                config = RunConfig(method="joint", estimator=None, bn=bn)
                for seed in range(1, 4):
                    c = config.replace(seed=seed)
                    test = jitter([list(JOINT_MNIST_FMNIST[bn])], bn, "joint", seed)
                    records.append(make_record(c, tasks, test, "joint"))
                continue
            lambdas = MNIST_FMNIST[(bn, method)]
            base = {
                "baseline": RunConfig(method="baseline", estimator=None, bn=bn),
                "l2": RunConfig(method="l2", estimator=None, bn=bn),
            }.get(method) or RunConfig(method="ewc", estimator=method, bn=bn)
            if method == "baseline":  # no lambda to choose: no selection run
                plan = [(0.0, 1), (0.0, 2), (0.0, 3)]
            else:
                plan = [(lam, 0) for lam in lambdas]
                plan += [(CHOSEN[method], s) for s in (1, 2, 3)]
            if method == "l2" and bn == "freeze":
                plan.append((1.0, 1))  # a seed at a lambda that loses: not selected
            for lam, seed in plan:
                c = base.replace(lam=lam, seed=seed)
                cells = lambdas[lam]
                diverged = cells is None or (
                    bn == "update" and method == "kfac-exact" and lam == 1000.0 and seed == 1
                )
                if cells is None:
                    cells = (0.9778, 0.0812, 0.0, 0.0)
                r00, r01, r10, r11 = cells
                test = jitter(
                    [[r00, r01], [r10, r11]], bn, method, lam, seed, first_row=("mf", seed)
                )
                if diverged:
                    test[1] = [None, None]
                records.append(make_record(c, tasks, test, method, 1 if diverged else None))
    return records


def permuted_records() -> list[RunRecord]:
    """A 3-task permuted-MNIST group (bn freeze), so that T > 2 paths are exercised."""
    records: list[RunRecord] = []
    tasks = ["perm-0", "perm-1", "perm-2"]
    base = RunConfig(sequence="permuted-mnist", n_tasks=3, bn="freeze")
    configs = {
        "baseline": base.replace(method="baseline", estimator=None),
        "diag-exact": base.replace(method="ewc", estimator="diag-exact"),
        "online": base.replace(method="ewc", estimator="diag-exact", mode="online", gamma=0.9),
    }
    seeds = {"baseline": range(1, 7), "diag-exact": range(1, 7), "online": range(1, 3)}
    for method, config in configs.items():
        plan = [] if method == "baseline" else [(lam, 0) for lam in PERMUTED[method]]
        chosen = PERMUTED_CHOSEN.get(method, 0.0)
        plan += [(chosen, s) for s in seeds[method] if s != 0]
        for lam, seed in plan:
            (r10, r20, r21), (d0, d1, d2) = PERMUTED[method][lam]
            chance = 0.1
            matrix = [[d0, chance, chance], [r10, d1, chance], [r20, r21, d2]]
            test = jitter(matrix, "perm", method, lam, seed, first_row=("perm", seed))
            c = config.replace(lam=lam, seed=seed)
            records.append(make_record(c, tasks, test, method))
    joint = base.replace(method="joint", estimator=None)
    for seed in range(1, 4):
        test = jitter([list(JOINT_PERMUTED)], "perm", "joint", seed)
        c = joint.replace(seed=seed)
        records.append(make_record(c, tasks, test, "joint"))
    return records


def check(records: list[RunRecord]) -> None:
    """The sample means what the docstring says: the intended lambdas win on validation."""
    chosen = choose_lambdas(records, [0])
    for r in records:
        c = r.config
        name = c["estimator"] if c["method"] == "ewc" else c["method"]
        if c["sequence"] == "permuted-mnist":
            name = "online" if c["mode"] == "online" else name
            want = PERMUTED_CHOSEN.get(name, 0.0)
        else:
            want = CHOSEN.get(name, 0.0)
        got = chosen[group_key(c)]
        if got != want:
            raise AssertionError(f"{c['sequence']} {c['bn']} {name}: chose {got}, meant {want}")


SWEEP = {
    "experiment": "sample",
    "description": "A small hand-made sample of run records for the report's golden test.",
    "notes": [
        "tutorial-mlp, Adam lr 1e-3, batch 100, 4 epochs per task, optimizer state carried over",
        "10% of each training set held out for validation; lambda chosen on it with seed 0 "
        "(never a test seed)",
        "curvature fitted on 1,000 training inputs of each task",
    ],
    "seeds": [1, 2, 3],
    "selection_seeds": [0],
    "source": {"lambdas": {"default": [100.0, 1000.0, 10000.0], "l2": [0.01, 0.1, 1.0]}},
    "command": COMMAND,
    "provenance": {**MACHINE, "git_sha": GIT_SHA},
    "started": "2026-01-02T03:10:00+00:00",
    "finished": "2026-01-02T04:13:05+00:00",
    "duration_seconds": 3785.0,
    "compute_seconds": 3712.5,
    "runs": 63,
}
PIPELINE = {
    "dataloader_seconds": 11.1,
    "dataloader_batches_only_seconds": 8.0,
    "tensor_seconds": 2.0,
    "ratio": 5.55,
    "machine": MACHINE,
    "git_sha": GIT_SHA,
    "date": "2026-01-02T03:05:00+00:00",
}


def main() -> None:
    """Rewrite the sample directory from scratch."""
    records = mnist_fmnist_records() + permuted_records()
    check(records)
    for index, record in enumerate(records):
        record.provenance = provenance(index)
    ids = [r.run_id for r in records]
    if len(set(ids)) != len(ids):
        raise AssertionError("duplicate run ids in the sample")
    if (OUT / "runs").exists():
        shutil.rmtree(OUT / "runs")
    for record in records:
        write_record(OUT, record)
    sweep = {**SWEEP, "run_ids": {"selection": [], "final": sorted(ids)}}
    for name, data in (("sweep.json", sweep), ("pipeline.json", PIPELINE)):
        (OUT / name).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(records)} records to {OUT}")


if __name__ == "__main__":
    main()
