"""The benchmark report: tables (Markdown, CSV) and figures (PNG), rebuilt from run records alone.

``build_report(results_dir, out_dir)`` reads ``results_dir/runs/*.json`` (``records``), the
optional ``results_dir/sweep.json`` (experiment metadata: name, description, protocol, command,
machine, git SHA, start, end, duration) and ``results_dir/pipeline.json`` (data-pipeline epoch
timing), chooses lambda per group on the validation split (``selection``), and writes

- ``out_dir/runs.csv``: one row per run (``CSV_COLUMNS``);
- ``out_dir/REPORT.md``: provenance, the tutorial reproduction table, per-sequence results with
  95% confidence intervals over seeds and paired tests against ``ewc diag-exact``, the chosen
  lambdas, the cost table, and the figures;
- ``out_dir/figures/*.png``: accuracy-matrix heatmaps, per-task accuracy curves, the lambda sweep
  as a stability-plasticity curve, and cost against accuracy.

The text depends on the records and metadata only (no clock, no paths, no library versions), so
it is golden-tested (``tests/test_report.py``). The module has three layers: loading and
aggregating (pure, no matplotlib), tables (pure functions returning Markdown), and figures (one
function per figure; matplotlib's Agg canvas, imported only there).

Conventions: tables show the test split at the chosen lambda (the *selected* runs), mean ± the
half-width of a 95% Student-t interval over seeds (``metrics.mean_ci``); runs that diverged or
failed are counted ("k of n diverged") and left out of every mean. Methods are ordered baseline,
l2, ewc by estimator (``estimators.names()`` order), ewc-online, joint. Where two runs of one
sequence share a method label but differ in another setting (say ``gamma``), the label gets that
setting as a suffix.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import estimators

from . import metrics
from .config import BN_MODES, PENALISED, RESULTS_VERSIONS, SEQUENCES
from .errors import UserError
from .records import RunRecord, quarantine, read_records
from .selection import choose_lambdas, group_key, is_selected

CSV_COLUMNS = (
    "sequence",
    "method",
    "estimator",
    "mode",
    "bn",
    "lambda",
    "seed",
    "selected",
    "val_avg_acc",
    "test_avg_acc",
    "forgetting",
    "bwt",
    "acc_matrix",
    "estimate_seconds",
    "train_seconds",
    "peak_rss_mb",
    "diverged",
    "run_id",
)
REFERENCE_METHOD = "ewc diag-exact"
"""Every method is compared with this one, seed by seed (paired tests)."""
TUTORIAL_SEQUENCE = "mnist-fmnist"
TUTORIAL_PUBLISHED = (
    ("EWC (tutorial, published)", (0.9772, 0.9717, 0.8312)),
    ("no penalty (tutorial, published)", (0.9762, 0.1769, 0.8672)),
)
"""The source tutorial's reported test accuracies: MNIST after A, MNIST after B, FMNIST after B."""
BN_TEXT = {
    "freeze": "BatchNorm statistics frozen after the first task (bn = freeze)",
    "update": "BatchNorm statistics updated in every task (bn = update)",
}
CONFIDENCE = 0.95
ANNOTATE_MAX_TASKS = 5
"""Heatmap cells carry their value up to this many tasks."""
VARIANT_IGNORE = ("lam", "seed", "device", "bn", "sequence")
"""Settings that never disambiguate a method label (they are the table's own axes)."""
FIGURE_PREFIXES = ("heatmap_", "tasks_", "lambda_", "cost_")


# ============================================================================================
# Loading and aggregating (pure, no matplotlib)
# ============================================================================================


@dataclass(frozen=True)
class Run:
    """One record as the report sees it: its place in the tables and its derived numbers.

    Attributes:
        record: the record itself.
        sequence: task sequence name.
        bn: BatchNorm mode.
        label: the method's display label (``method_label`` plus a variant suffix if needed).
        lam: penalty strength lambda.
        seed: root seed.
        group: the selection group key (``selection.group_key``).
        selected: whether the run is at its group's chosen lambda.
        val_avg: validation average accuracy (mean of the last row), None if undefined.
        test_avg: test average accuracy.
        forgetting: test forgetting (``metrics.forgetting``).
        bwt: test backward transfer (``metrics.backward_transfer``).
    """

    record: RunRecord
    sequence: str
    bn: str
    label: str
    lam: float
    seed: int
    group: str
    selected: bool
    val_avg: float | None
    test_avg: float | None
    forgetting: float | None
    bwt: float | None

    @property
    def ok(self) -> bool:
        """Whether the run finished (neither diverged nor failed)."""
        return self.record.status == "ok"

    @property
    def diverged(self) -> bool:
        """Whether the run's loss became NaN/inf."""
        return self.record.status == "diverged"


def load_records(results_dir: Path, meta: dict[str, Any] | None = None) -> list[RunRecord]:
    """The run records of a results folder: the sweep's own runs when ``meta`` lists them.

    ``meta["run_ids"]`` (written by the sweep into ``sweep.json``) names the runs of the sweep
    that made the folder; other records (an earlier sweep's, a lone ``run --results``) are left
    out. Without it, every record under ``results_dir/runs`` is used.

    Raises:
        FileNotFoundError: the results directory does not exist or holds no record.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(
            f"results directory {results_dir} does not exist: run a sweep first, "
            f"or point the report at the folder that holds runs/"
        )
    records = list(read_records(results_dir))
    ids = (meta or {}).get("run_ids")
    if isinstance(ids, dict):
        wanted = {i for phase in ids.values() for i in phase}
        records = [r for r in records if r.run_id in wanted]
    if not records:
        raise FileNotFoundError(
            f"no run records under {results_dir / 'runs'} (expected runs/<run_id>.json)"
        )
    return records


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file; None when absent, or when unreadable (then moved to quarantine/)."""
    if not path.is_file():
        return None
    try:
        with path.open() as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
    except (ValueError, UnicodeDecodeError) as err:
        quarantine(path, path.parent, f"not a valid {path.name}: {' '.join(str(err).split())}")
        return None
    return data


def load_meta(results_dir: Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Experiment metadata: ``results_dir/sweep.json`` if present, updated by ``meta``."""
    merged = dict(_read_json(Path(results_dir) / "sweep.json") or {})
    merged.update(meta or {})
    return merged


def load_pipeline(results_dir: Path) -> dict[str, Any] | None:
    """The data-pipeline timing in ``results_dir/pipeline.json``, None if absent."""
    return _read_json(Path(results_dir) / "pipeline.json")


def method_label(config: dict[str, Any]) -> str:
    """``RunConfig.label`` computed from a config dict, without re-validating the config.

    ``baseline``, ``l2``, ``joint``, ``ewc <estimator>`` or ``ewc-online <estimator>``.
    """
    if config.get("method") != "ewc":
        return str(config.get("method"))
    prefix = "ewc-online " if config.get("mode") == "online" else "ewc "
    return prefix + str(config.get("estimator"))


def method_sort_key(label: str) -> tuple[int, int, str]:
    """Order: baseline, l2, ewc (estimators.names() order), ewc-online, joint, others."""
    base, _, suffix = label.partition(" (")
    names = estimators.names()
    fixed = {"baseline": 0, "l2": 1, "joint": 4}
    if base in fixed:
        return fixed[base], 0, suffix
    for rank, prefix in ((2, "ewc "), (3, "ewc-online ")):
        if base.startswith(prefix):
            est = base[len(prefix) :]
            return rank, names.index(est) if est in names else len(names), est + suffix
    return 5, 0, label


def sequence_sort_key(sequence: str) -> tuple[int, str]:
    """The order of ``config.SEQUENCES``; unknown sequences after, alphabetically."""
    order = list(SEQUENCES)
    return (order.index(sequence) if sequence in order else len(order), sequence)


def bn_sort_key(bn: str) -> tuple[int, str]:
    """``freeze`` first (the tutorial's published numbers), then ``update``."""
    order = ["freeze", *[m for m in BN_MODES if m != "freeze"]]
    return (order.index(bn) if bn in order else len(order), bn)


def _variant_key(config: dict[str, Any]) -> str:
    rest = {k: v for k, v in config.items() if k not in VARIANT_IGNORE}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"))


def _fmt_setting(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def display_labels(records: Sequence[RunRecord]) -> dict[str, str]:
    """``run_id -> label``; a suffix names the settings that tell apart same-label variants.

    Within a sequence, runs whose ``method_label`` agree but whose configs differ in anything
    but lambda, seed, device and bn are different variants: each gets ``(setting=value, ...)``
    for the settings that differ among them.
    """
    variants: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in records:
        key = (str(r.config.get("sequence")), method_label(r.config))
        variants.setdefault(key, {})[_variant_key(r.config)] = r.config
    labels: dict[str, str] = {}
    for r in records:
        key = (str(r.config.get("sequence")), method_label(r.config))
        configs = variants[key]
        label = key[1]
        if len(configs) > 1:
            fields = sorted(
                f
                for f in set().union(*configs.values()) - set(VARIANT_IGNORE)
                if len({_fmt_setting(c.get(f)) for c in configs.values()}) > 1
            )
            suffix = ", ".join(f"{f}={_fmt_setting(r.config.get(f))}" for f in fields)
            label = f"{label} ({suffix})"
        labels[r.run_id] = label
    return labels


def _metric(fn: Callable[[Any], float | None], matrix: list, record: RunRecord) -> float | None:
    if record.status == "failed" or not matrix:
        return None
    try:
        return fn(matrix)
    except ValueError as err:
        raise ValueError(f"run {record.run_id}: {err}") from err


def summarise(records: Iterable[RunRecord], selection_seed: int = 0) -> list[Run]:
    """The report's view of every record, sorted (sequence, bn, method, lambda, seed, id).

    Lambda is chosen per group with ``selection.choose_lambdas`` on the validation split of
    ``selection_seed``; ``Run.selected`` follows ``selection.is_selected``.
    """
    records = list(records)
    chosen = choose_lambdas(records, selection_seed)
    labels = display_labels(records)
    runs = []
    for r in records:
        c = r.config
        runs.append(
            Run(
                record=r,
                sequence=str(c.get("sequence")),
                bn=str(c.get("bn")),
                label=labels[r.run_id],
                lam=float(c.get("lam", 0.0)),
                seed=int(c.get("seed", 0)),
                group=group_key(c),
                selected=is_selected(r, chosen),
                val_avg=_metric(metrics.average_accuracy, r.acc_val, r),
                test_avg=_metric(metrics.average_accuracy, r.acc_test, r),
                forgetting=_metric(metrics.forgetting, r.acc_test, r),
                bwt=_metric(metrics.backward_transfer, r.acc_test, r),
            )
        )
    return sorted(runs, key=run_sort_key)


def run_sort_key(run: Run) -> tuple:
    """Deterministic order of runs in every table and in runs.csv."""
    return (
        sequence_sort_key(run.sequence),
        bn_sort_key(run.bn),
        method_sort_key(run.label),
        run.lam,
        run.seed,
        run.record.run_id,
    )


def sequences(runs: Iterable[Run]) -> list[str]:
    """Sequences present, in report order."""
    return sorted({r.sequence for r in runs}, key=sequence_sort_key)


def bn_modes(runs: Iterable[Run], sequence: str) -> list[str]:
    """BatchNorm modes present for ``sequence``, in report order."""
    return sorted({r.bn for r in runs if r.sequence == sequence}, key=bn_sort_key)


def method_labels(runs: Iterable[Run], sequence: str, bn: str | None = None) -> list[str]:
    """Method labels present for ``sequence`` (and ``bn``), in report order."""
    found = {r.label for r in runs if r.sequence == sequence and (bn is None or r.bn == bn)}
    return sorted(found, key=method_sort_key)


def selected(runs: Iterable[Run], sequence: str, bn: str | None, label: str) -> list[Run]:
    """The selected runs of one method (every seed at the chosen lambda; all statuses)."""
    return [
        r
        for r in runs
        if r.selected and r.sequence == sequence and (bn is None or r.bn == bn) and r.label == label
    ]


def excluded_note(runs: Sequence[Run]) -> str:
    """``"1 of 3 diverged"`` (and failed), or ``""`` when every run finished."""
    n = len(runs)
    counts = Counter(r.record.status for r in runs)
    parts = [f"{counts[s]} of {n} {s}" for s in ("diverged", "failed") if counts[s]]
    return ", ".join(parts)


def mean_matrix(runs: Sequence[Run], split: str = "test") -> np.ndarray | None:
    """Cell-wise mean over the finished runs' matrices (NaN where no run has a value).

    A one-row (joint) matrix is placed in the last row of a ``T x T`` grid.
    """
    mats = []
    for r in runs:
        if not r.ok:
            continue
        m = r.record.acc_test if split == "test" else r.record.acc_val
        arr = np.array([[np.nan if v is None else v for v in row] for row in m], dtype=float)
        T = arr.shape[1]
        if arr.shape[0] == 1 and T > 1:
            full = np.full((T, T), np.nan)
            full[-1] = arr[0]
            arr = full
        mats.append(arr)
    if not mats or len({m.shape for m in mats}) != 1:
        return None
    stack = np.stack(mats)
    out = np.full(stack.shape[1:], np.nan)
    has = ~np.all(np.isnan(stack), axis=0)
    out[has] = np.nanmean(stack[:, has], axis=0)
    return out


def run_cost_seconds(run: Run) -> float:
    """Estimation seconds plus the time the penalty took, summed over tasks.

    Penalty time of task t ~ train_seconds[t] * penalty_ms[t] / (step_ms[t] + penalty_ms[t]):
    the share of a penalised step that the penalty costs, applied to the task's training time.
    """
    r = run.record
    total = float(sum(r.estimate_seconds))
    for t, train in enumerate(r.train_seconds):
        pen = r.penalty_ms[t] if t < len(r.penalty_ms) else None
        step = r.step_ms[t] if t < len(r.step_ms) else None
        if pen is not None and step is not None and pen + step > 0:
            total += float(train) * pen / (step + pen)
    return total


@dataclass(frozen=True)
class Cost:
    """Mean cost of one method's finished selected runs (None where nothing was measured)."""

    n: int
    estimate_per_task_s: float | None
    penalty_ms: float | None
    penalty_pct: float | None
    step_ms: float | None
    curvature_bytes: float | None
    peak_rss_mb: float | None


def _mean_or_none(values: Iterable[float | None]) -> float | None:
    xs = [float(v) for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def method_cost(runs: Sequence[Run]) -> Cost:
    """Per-run means over tasks, then means over runs (finished runs only).

    Estimation time per task counts the tasks whose curvature was fitted (estimate > 0);
    penalty per step counts the tasks that had a penalty (penalty_ms not None); its percentage
    is penalty_ms / step_ms per task; curvature bytes are the largest per-task value.
    """
    done = [r.record for r in runs if r.ok]
    est, pen, pct, step, nbytes = [], [], [], [], []
    for r in done:
        fitted = [s for s in r.estimate_seconds if s and s > 0]
        est.append(sum(fitted) / len(fitted) if fitted else 0.0)
        pairs = [(p, s) for p, s in zip(r.penalty_ms, r.step_ms, strict=False) if p is not None]
        pen.append(_mean_or_none(p for p, _ in pairs))
        pct.append(_mean_or_none(100.0 * p / s for p, s in pairs if s))
        step.append(_mean_or_none(r.step_ms))
        nbytes.append(max(r.curvature_bytes) if r.curvature_bytes else None)
    return Cost(
        n=len(done),
        estimate_per_task_s=_mean_or_none(est),
        penalty_ms=_mean_or_none(pen),
        penalty_pct=_mean_or_none(pct),
        step_ms=_mean_or_none(step),
        curvature_bytes=_mean_or_none(nbytes),
        peak_rss_mb=_mean_or_none(r.peak_rss_mb for r in done),
    )


# -- runs.csv ----------------------------------------------------------------------------------


def _csv_num(x: float | None) -> str:
    if x is None:
        return ""
    return repr(round(float(x), 6) + 0.0)


def csv_row(run: Run) -> dict[str, str]:
    """One row of runs.csv (every value as text)."""
    r, c = run.record, run.record.config
    return {
        "sequence": run.sequence,
        "method": str(c.get("method")),
        "estimator": c.get("estimator") or "",
        "mode": str(c.get("mode", "")),
        "bn": run.bn,
        "lambda": fmt_lambda(run.lam),
        "seed": str(run.seed),
        "selected": "true" if run.selected else "false",
        "val_avg_acc": _csv_num(run.val_avg),
        "test_avg_acc": _csv_num(run.test_avg),
        "forgetting": _csv_num(run.forgetting),
        "bwt": _csv_num(run.bwt),
        "acc_matrix": json.dumps(r.acc_test),
        "estimate_seconds": _csv_num(sum(r.estimate_seconds)),
        "train_seconds": _csv_num(sum(r.train_seconds)),
        "peak_rss_mb": _csv_num(r.peak_rss_mb),
        "diverged": "true" if run.diverged else "false",
        "run_id": r.run_id,
    }


def runs_csv(runs: Iterable[Run]) -> str:
    """runs.csv as text: ``CSV_COLUMNS``, one row per run, in ``run_sort_key`` order."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for run in sorted(runs, key=run_sort_key):
        writer.writerow(csv_row(run))
    return buf.getvalue()


# ============================================================================================
# Tables (pure functions returning Markdown)
# ============================================================================================


def fmt_lambda(lam: float) -> str:
    """``100000``, ``0.01``, ``1e-05``: no thousands separators (lambdas appear in lists)."""
    return f"{lam:.10g}"


def lambda_text(run: Run) -> str:
    """The run's lambda, ``—`` for a method without a penalty."""
    if run.record.config.get("method") not in PENALISED:
        return "—"
    return fmt_lambda(run.lam)


def fmt_acc(x: float | None, digits: int = 4) -> str:
    """An accuracy (or difference) with ``digits`` decimals, ``—`` for None."""
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_ci(mean: float | None, half: float | None, digits: int = 4) -> str:
    """``mean ± half`` (just the mean when the half-width is undefined), ``—`` without data."""
    if mean is None:
        return "—"
    if half is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def fmt_signed(x: float | None, digits: int = 4) -> str:
    """A difference with an explicit sign."""
    if x is None:
        return "—"
    return f"{x + 0.0:+.{digits}f}"


def fmt_p(p: float | None) -> str:
    """A p-value: three decimals, ``<0.001`` below."""
    if p is None:
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_bytes(n: float | None) -> str:
    """Bytes in binary units, three significant digits."""
    if n is None:
        return "—"
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}"
    raise AssertionError("unreachable")


def fmt_seconds(x: float | None) -> str:
    """Seconds with three significant digits (ms below 1 s)."""
    if x is None:
        return "—"
    if x == 0:
        return "0"
    if x < 1:
        return f"{x * 1000:.3g} ms"
    return f"{x:.3g} s"


def fmt_num(x: float | None, digits: int = 3) -> str:
    """A plain number with three significant digits (no exponent below 1e6)."""
    if x is None:
        return "—"
    if abs(x) >= 10 ** (digits - 1):
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def fmt_duration(seconds: float | None) -> str:
    """``1 h 03 min 05 s``, ``4 min 10 s``, ``12.5 s``."""
    if seconds is None:
        return "not recorded"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min {sec:02d} s" if h else f"{m} min {sec:02d} s"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A Markdown table; ``align`` has one letter per column (``l`` or ``r``, default ``l``)."""
    align = align[: len(header)].ljust(len(header), "l")
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# -- (a) provenance ----------------------------------------------------------------------------


def _machine(meta: dict[str, Any]) -> dict[str, Any]:
    for key in ("machine", "provenance", "environment"):
        value = meta.get(key)
        if isinstance(value, dict):
            return value
    return {}


def _lookup(meta: dict[str, Any], *keys: str) -> Any:
    machine = _machine(meta)
    for key in keys:
        if meta.get(key) is not None:
            return meta[key]
        if machine.get(key) is not None:
            return machine[key]
    return None


def machine_text(machine: dict[str, Any] | str | None) -> str:
    """One line describing the hardware (platform, CPU and cores, GPU, device, threads)."""
    if machine is None or machine == {}:
        return "not recorded"
    if not isinstance(machine, dict):
        return str(machine)
    parts = []
    if machine.get("platform"):
        parts.append(str(machine["platform"]))
    if machine.get("cpu"):
        cores = f" ({machine['cores']} cores)" if machine.get("cores") else ""
        parts.append(f"CPU: {machine['cpu']}{cores}")
    if machine.get("gpu"):
        parts.append(f"GPU: {machine['gpu']}")
    if machine.get("device"):
        parts.append(f"device {machine['device']}")
    if machine.get("torch_threads"):
        parts.append(f"torch threads {machine['torch_threads']}")
    return "; ".join(parts) if parts else "not recorded"


def versions_text(meta: dict[str, Any]) -> str:
    """Python, torch (and other recorded library versions) and the git SHA."""
    machine = _machine(meta)
    parts = []
    for key, name in (("python", "Python"), ("torch", "torch")):
        if machine.get(key) or meta.get(key):
            parts.append(f"{name} {machine.get(key) or meta.get(key)}")
    for key in ("numpy", "scipy", "torchvision"):
        if machine.get(key):
            parts.append(f"{key} {machine[key]}")
    sha = _lookup(meta, "git_sha", "git")
    parts.append(f"git {sha}" if sha else "git SHA not recorded")
    return ", ".join(parts)


def _protocol_lines(protocol: Any) -> list[str]:
    if protocol is None:
        return []
    if isinstance(protocol, str):
        return [f"- Protocol: {protocol}"]
    if isinstance(protocol, dict):
        items = [f"{k}: {_fmt_setting(v)}" for k, v in protocol.items()]
    else:
        items = [str(p) for p in protocol]
    return ["- Protocol:", *[f"  - {item}" for item in items]]


def _secs(x: Any) -> str:
    return "—" if x is None else f"{float(x):.1f} s"


def pipeline_text(pipeline: dict[str, Any]) -> str:
    """One line on the data pipeline: DataLoader + ToTensor epoch vs in-memory tensors."""
    loader = pipeline.get("dataloader_seconds")
    tensor = pipeline.get("tensor_seconds")
    ratio = pipeline.get("ratio")
    if ratio is None and loader and tensor:
        ratio = loader / tensor
    batches = pipeline.get("dataloader_batches_only_seconds")
    text = f"- Data pipeline: one training epoch takes {_secs(loader)} with a DataLoader and "
    text += "per-item ToTensor"
    if batches is not None:
        text += f" ({_secs(batches)} of it producing the batches)"
    text += f", {_secs(tensor)} with the data held as tensors"
    if ratio is not None:
        text += f" ({fmt_num(ratio)}x)"
    machine = pipeline.get("machine")
    if machine:
        text += f"; {machine_text(machine)}"
    return text


def _seed_mismatch(meta: dict[str, Any], selection_seed: int) -> str:
    recorded = meta.get("selection_seed")
    if recorded is None or recorded == selection_seed:
        return ""
    return f" Note: the sweep chose lambda with seed {recorded}; this report uses {selection_seed}."


def record_shas(runs: Sequence[Run]) -> str:
    """``sha (n runs), ...`` of the git SHAs recorded in the runs' provenance."""
    counts = Counter(str(r.record.provenance.get("git_sha")) for r in runs)
    return ", ".join(f"{sha} ({n} runs)" for sha, n in sorted(counts.items()))


def results_version_text(runs: Sequence[Run]) -> str:
    """Which harness made the records (``config.RESULTS_VERSION``), and what changed in it."""
    counts = Counter(r.record.provenance.get("results_version", 1) for r in runs)
    parts = [
        f"version {v} ({n} runs: {RESULTS_VERSIONS.get(v, 'unknown')})"
        for v, n in sorted(counts.items())
    ]
    return (
        "- Harness: results "
        + "; ".join(parts)
        + ". The version is part of every run id, so records of another version are never reused"
    )


def peak_memory_text(runs: Sequence[Run]) -> str:
    """The largest peak resident memory of any run (runs go one per process slot)."""
    peaks = [(r.record.peak_rss_mb, r) for r in runs if r.record.peak_rss_mb is not None]
    if not peaks:
        return "- Peak memory: not recorded"
    mb, run = max(peaks, key=lambda p: p[0])
    return (
        f"- Peak memory: {mb:,.0f} MiB resident, the largest of any run "
        f"({run.record.config['sequence']}, {run.label}); each run's peak is in "
        "[runs.csv](runs.csv)"
    )


def provenance_section(
    meta: dict[str, Any],
    pipeline: dict[str, Any] | None,
    runs: Sequence[Run],
    selection_seed: int,
) -> str:
    """(a) How the report was produced: command, machine, versions, dates, protocol."""
    statuses = Counter(r.record.status for r in runs)
    seeds = sorted({r.seed for r in runs})
    lines = [
        "## How this report was produced",
        "",
        f"- Command: `{meta['command']}`" if meta.get("command") else "- Command: not recorded",
        f"- Machine: {machine_text(_machine(meta))}",
        f"- Versions: {versions_text(meta)}",
        f"- Started {meta.get('started') or 'not recorded'}, finished "
        f"{meta.get('finished') or 'not recorded'}; duration "
        f"{fmt_duration(meta.get('duration_seconds'))}"
        + (
            f" (compute: {fmt_duration(meta['compute_seconds'])} summed over runs)"
            if meta.get("compute_seconds") is not None
            else ""
        ),
        f"- Records: {len(runs)} runs ({statuses['diverged']} diverged, {statuses['failed']} "
        f"failed); sequences {', '.join(sequences(runs))}; seeds "
        f"{', '.join(str(s) for s in seeds)}; git SHAs in the records: {record_shas(runs)}",
        peak_memory_text(runs),
        results_version_text(runs),
        *_protocol_lines(meta.get("protocol") or meta.get("notes") or meta.get("protocol_notes")),
        f"- Lambda: chosen per group (sequence, method, bn and every other setting) on the "
        f"validation split of seed {selection_seed}: the highest validation average accuracy, "
        f"ties to the smaller lambda, diverged runs never chosen. Tables report the test split "
        f"at the chosen lambda, mean ± half-width of a {CONFIDENCE:.0%} Student-t interval over "
        f"seeds; diverged or failed runs are counted and left out."
        + _seed_mismatch(meta, selection_seed),
    ]
    if pipeline:
        lines.append(pipeline_text(pipeline))
    lines.append(
        "- Rebuilt from the run records alone (`benchmark.report.build_report`); "
        "every run is listed in [runs.csv](runs.csv)."
    )
    return "\n".join(lines)


# -- (b) tutorial reproduction -----------------------------------------------------------------


def tutorial_cells(run: Run) -> tuple[float | None, float | None, float | None]:
    """(MNIST after A, MNIST after B, FashionMNIST after B) of one run; joint: (—, R00, R01)."""
    m = run.record.acc_test
    if not run.ok or not m:
        return None, None, None
    if len(m) == 1:
        return None, m[0][0], m[0][1]
    return m[0][0], m[1][0], m[1][1]


def tutorial_table(runs: Sequence[Run], bn: str) -> str:
    """The tutorial's three numbers for each selected method, one bn mode."""
    header = ["method", "λ", "MNIST after A", "MNIST after B", "FashionMNIST after B", "excluded"]
    rows = []
    for label in method_labels(runs, TUTORIAL_SEQUENCE, bn):
        chosen = selected(runs, TUTORIAL_SEQUENCE, bn, label)
        if not chosen:
            continue
        cells = [tutorial_cells(r) for r in chosen]
        row = [label, lambda_text(chosen[0])]
        for k in range(3):
            mean, half, n = metrics.mean_ci([c[k] for c in cells], CONFIDENCE)
            row.append(f"{fmt_ci(mean, half)} (n={n})" if n else "—")
        rows.append([*row, excluded_note(chosen) or "—"])
    for name, values in TUTORIAL_PUBLISHED:
        rows.append([f"*{name}*", "—", *[f"*{v:.4f}*" for v in values], "one seed"])
    return md_table(header, rows, "llrrrl")


def tutorial_section(runs: Sequence[Run]) -> str:
    """(b) The tutorial's experiment reproduced, per BatchNorm mode, with its published numbers."""
    modes = bn_modes(runs, TUTORIAL_SEQUENCE)
    if not modes:
        return ""
    parts = [
        f"## The tutorial's experiment ({TUTORIAL_SEQUENCE})",
        "",
        "Task A = MNIST, task B = FashionMNIST, one shared head; test accuracy at the chosen "
        "lambda, mean ± 95% CI over seeds (n = finished seeds). `joint` trains once on both "
        "tasks, so it has no 'after A' value. The italic rows are the tutorial's published "
        "numbers (one seed, a GPU, its own batched Fisher and lambda = 100,000).",
        "",
        "BatchNorm axis: BatchNorm's running statistics are buffers, not parameters, so no "
        "penalty protects them. With `bn = update` (train mode in task B, what the tutorial's "
        "code intends) they drift to FashionMNIST's inputs; with `bn = freeze` (eval mode after "
        "task A) they keep MNIST's. The tutorial's published EWC numbers match only the frozen "
        "case: its evaluation helper calls `model.eval()` and nothing switches back. Re-running "
        "its code (seed 0, CPU) gave EWC 0.9669 on MNIST after B with frozen statistics and "
        "0.5156 with updated ones (see REFERENCE.md).",
    ]
    for bn in modes:
        parts += ["", f"### {BN_TEXT.get(bn, f'bn = {bn}')}", "", tutorial_table(runs, bn)]
    return "\n".join(parts)


# -- (c) results per sequence ------------------------------------------------------------------


def _by_seed(runs: Sequence[Run], attr: str) -> dict[int, float | None]:
    return {r.seed: getattr(r, attr) for r in runs if r.ok}


def paired_cells(runs: Sequence[Run], reference: Sequence[Run]) -> list[str]:
    """Δ test average accuracy vs the reference (same seeds), paired-t p and Wilcoxon p."""
    a, b = _by_seed(runs, "test_avg"), _by_seed(reference, "test_avg")
    seeds = sorted(set(a) & set(b))
    test = metrics.paired_test([a[s] for s in seeds], [b[s] for s in seeds])
    if test["mean_diff"] is None:
        return ["—", "—", "—"]
    return [
        f"{fmt_signed(test['mean_diff'])} (n={test['n']})",
        fmt_p(test["t_pvalue"]),
        fmt_p(test["wilcoxon_pvalue"]),
    ]


def results_table(runs: Sequence[Run], sequence: str, bn: str) -> str:
    """Average accuracy, forgetting and BWT per method (test split), with paired tests."""
    labels = method_labels(runs, sequence, bn)
    refs = [lab for lab in labels if lab.partition(" (")[0] == REFERENCE_METHOD]
    reference = selected(runs, sequence, bn, refs[0]) if refs else []
    header = ["method", "λ", "seeds", "excluded", "avg accuracy", "forgetting", "BWT"]
    if reference:
        header += [f"Δ avg acc vs {refs[0]}", "p (paired t)", "p (Wilcoxon)"]
    rows = []
    for label in labels:
        chosen = selected(runs, sequence, bn, label)
        if not chosen:
            n_all = sum(
                1 for r in runs if r.sequence == sequence and r.bn == bn and r.label == label
            )
            rows.append(
                [
                    label,
                    "none chosen",
                    "0",
                    f"no finished run on the selection seed ({n_all} runs)",
                    "—",
                    "—",
                    "—",
                ]
                + (["—"] * 3 if reference else [])
            )
            continue
        ok = [r for r in chosen if r.ok]
        row = [label, lambda_text(chosen[0]), str(len(ok)), excluded_note(chosen) or "—"]
        for attr in ("test_avg", "forgetting", "bwt"):
            mean, half, _ = metrics.mean_ci([getattr(r, attr) for r in ok], CONFIDENCE)
            row.append(fmt_ci(mean, half))
        if reference:
            is_ref = label == refs[0]
            row += ["reference", "—", "—"] if is_ref else paired_cells(chosen, reference)
        rows.append(row)
    return md_table(header, rows, "llrlrrrrrr")


def results_section(runs: Sequence[Run]) -> str:
    """(c) For each sequence and bn mode: the results table."""
    parts = [
        "## Results per sequence",
        "",
        "Test split at the chosen lambda; mean ± 95% CI over the finished seeds (`seeds`). "
        "Average accuracy = mean of the last row of the accuracy matrix; forgetting = mean over "
        "earlier tasks of (best accuracy since learnt − final accuracy) (Chaudhry et al. 2018); "
        "BWT = mean of (final − just-learnt accuracy) (Lopez-Paz & Ranzato 2017); both are "
        "undefined (—) for joint. Δ is the mean paired difference in average accuracy against "
        f"`{REFERENCE_METHOD}` over the seeds both finished (n pairs), with the paired t-test's "
        "p-value and, from 6 pairs on, the Wilcoxon signed-rank test's. `excluded`: runs that "
        "diverged or failed, left out of every number.",
    ]
    for seq in sequences(runs):
        parts += ["", f"### {seq}"]
        tasks = _tasks(runs, seq)
        if tasks:
            parts += ["", f"Tasks, in order: {', '.join(tasks)}."]
        for bn in bn_modes(runs, seq):
            parts += ["", f"#### {BN_TEXT.get(bn, f'bn = {bn}')}", "", results_table(runs, seq, bn)]
    return "\n".join(parts)


def _tasks(runs: Sequence[Run], sequence: str) -> list[str]:
    for r in runs:
        if r.sequence == sequence and r.record.tasks:
            return list(r.record.tasks)
    return []


# -- (d) chosen lambdas ------------------------------------------------------------------------


def lambda_grid_cell(group: Sequence[Run], selection_seed: int, chosen: float) -> str:
    """``100: 0.8712, **1000: 0.8930**, 10000: diverged`` on the selection seed."""
    items = []
    for r in sorted((r for r in group if r.seed == selection_seed), key=lambda r: r.lam):
        value = fmt_acc(r.val_avg) if r.ok else r.record.status
        text = f"{fmt_lambda(r.lam)}: {value}"
        items.append(f"**{text}**" if r.lam == chosen and r.ok else text)
    return ", ".join(items) if items else "—"


def declared_grid(meta: dict[str, Any]) -> str:
    """The experiment's lambda grids (``lambdas`` in sweep.json or its ``source``), as text."""
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    grid = meta.get("lambda_grid") or meta.get("lambdas") or source.get("lambdas")
    if not grid:
        return ""

    def values(v: Any) -> str:
        if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
            return ", ".join(fmt_lambda(float(x)) for x in v)
        return _fmt_setting(v)

    if isinstance(grid, dict):
        return "; ".join(f"{k}: {values(v)}" for k, v in grid.items())
    return values(grid)


def lambda_section(runs: Sequence[Run], meta: dict[str, Any], selection_seed: int) -> str:
    """(d) Chosen lambda per sequence, bn and penalised method, with the validation scores."""
    rows = []
    for seq in sequences(runs):
        for bn in bn_modes(runs, seq):
            for label in method_labels(runs, seq, bn):
                group = [r for r in runs if r.sequence == seq and r.bn == bn and r.label == label]
                if group[0].record.config.get("method") not in PENALISED:
                    continue
                chosen = [r for r in group if r.selected]
                lam = chosen[0].lam if chosen else None
                best = [r for r in chosen if r.seed == selection_seed and r.ok]
                rows.append(
                    [
                        seq,
                        bn,
                        label,
                        "none" if lam is None else fmt_lambda(lam),
                        fmt_acc(best[0].val_avg) if best else "—",
                        lambda_grid_cell(group, selection_seed, -1.0 if lam is None else lam),
                    ]
                )
    parts = [
        "## Chosen lambdas",
        "",
        f"Chosen on the validation split of seed {selection_seed} (highest validation average "
        "accuracy, ties to the smaller lambda; the chosen one in bold), per sequence, bn and "
        "penalised method; the last column lists every lambda the group ran on that seed. "
        "Baseline and joint have no lambda.",
    ]
    grid = declared_grid(meta)
    if grid:
        parts += ["", f"Lambda grids declared by the experiment: {grid}."]
    if rows:
        header = [
            "sequence",
            "bn",
            "method",
            "chosen λ",
            "val avg acc",
            "λ grid: val avg acc per λ",
        ]
        parts += ["", md_table(header, rows, "lllrrl")]
    else:
        parts += ["", "No penalised runs."]
    return "\n".join(parts)


# -- (e) cost ----------------------------------------------------------------------------------


def cost_table(runs: Sequence[Run], sequence: str) -> str:
    """Per method: estimation time, penalty overhead, curvature bytes, peak memory."""
    header = [
        "method",
        "runs",
        "estimation / task",
        "penalty ms / step",
        "penalty % of plain step",
        "plain step ms",
        "curvature / task",
        "peak RSS MiB",
    ]
    rows = []
    for label in method_labels(runs, sequence):
        cost = method_cost(selected(runs, sequence, None, label))
        if cost.n == 0:
            continue
        rows.append(
            [
                label,
                str(cost.n),
                fmt_seconds(cost.estimate_per_task_s),
                fmt_num(cost.penalty_ms),
                "—" if cost.penalty_pct is None else f"{cost.penalty_pct:.1f}%",
                fmt_num(cost.step_ms),
                fmt_bytes(cost.curvature_bytes),
                fmt_num(cost.peak_rss_mb),
            ]
        )
    return md_table(header, rows, "lrrrrrrr")


def cost_section(runs: Sequence[Run]) -> str:
    """(e) The cost table per sequence (selected, finished runs; both bn modes pooled)."""
    parts = [
        "## Cost",
        "",
        "Finished selected runs of each method, bn modes pooled (means over runs of per-task "
        "means). Estimation: wall time of fitting the curvature after a task (tasks where one "
        "was fitted). Penalty: median extra time per training step that the penalty costs "
        "(its closed-form gradient, added after the loss's backward), in ms and as a share of "
        "a plain step (forward, "
        "loss, backward, optimizer step). Curvature: bytes of one task's curvature. Peak RSS: "
        "the process's peak resident memory during the run.",
    ]
    for seq in sequences(runs):
        parts += ["", f"### {seq}", "", cost_table(runs, seq)]
    return "\n".join(parts)


# -- (f) figures (the Markdown side) -----------------------------------------------------------


@dataclass(frozen=True)
class FigureSpec:
    """One figure: its file name, what it shows, and the function that draws it."""

    name: str
    sequence: str
    bn: str | None
    kind: str
    caption: str


def planned_figures(runs: Sequence[Run]) -> list[FigureSpec]:
    """Every figure the records support, in report order (pure: decides names and captions)."""
    specs = []
    for seq in sequences(runs):
        T = len(_tasks(runs, seq))
        for bn in bn_modes(runs, seq):
            if not any(r.selected and r.ok and r.sequence == seq and r.bn == bn for r in runs):
                continue
            specs.append(
                FigureSpec(
                    f"heatmap_{seq}_{bn}.png",
                    seq,
                    bn,
                    "heatmap",
                    f"Test accuracy matrices, {seq}, bn = {bn}: row i = after task i, column "
                    f"j = task j, chosen λ, mean over finished seeds (n in each title); joint "
                    f"fills only the last row.",
                )
            )
            if T >= 2:
                specs.append(
                    FigureSpec(
                        f"tasks_{seq}_{bn}.png",
                        seq,
                        bn,
                        "tasks",
                        f"Test accuracy on each task as the sequence goes on, {seq}, bn = {bn}: "
                        f"one panel per method, one line per task from the moment it is learnt "
                        f"(chosen λ, mean over finished seeds).",
                    )
                )
        penalised = any(
            r.sequence == seq and r.record.config.get("method") in PENALISED for r in runs
        )
        if T >= 2 and penalised:
            specs.append(
                FigureSpec(
                    f"lambda_{seq}.png",
                    seq,
                    None,
                    "lambda",
                    f"Lambda sweep as a stability-plasticity curve, {seq} (validation split, "
                    f"selection seed): x = accuracy on the last task, y = mean accuracy on the "
                    f"earlier ones; one line per method through its λ (labelled), the chosen λ "
                    f"circled; diverged runs left out.",
                )
            )
        if penalised:
            specs.append(
                FigureSpec(
                    f"cost_{seq}.png",
                    seq,
                    None,
                    "cost",
                    f"Cost against accuracy, {seq}: x = curvature estimation + penalty seconds "
                    f"per run (log scale), y = test average accuracy, mean ± 95% CI over seeds "
                    f"at the chosen λ; baseline and joint as horizontal lines.",
                )
            )
    return specs


def figures_section(specs: Sequence[FigureSpec]) -> str:
    """(f) Each figure embedded with its one-line caption, grouped by sequence."""
    if not specs:
        return ""
    parts = ["## Figures"]
    current = None
    for spec in specs:
        if spec.sequence != current:
            current = spec.sequence
            parts += ["", f"### {current}"]
        alt = spec.name.removesuffix(".png").replace("_", " ")
        parts += ["", f"![{alt}](figures/{spec.name})", "", f"*{spec.caption}*"]
    return "\n".join(parts)


def render_markdown(
    runs: Sequence[Run],
    meta: dict[str, Any],
    pipeline: dict[str, Any] | None,
    selection_seed: int = 0,
) -> str:
    """The whole REPORT.md (pure: same runs and metadata, same text)."""
    name = meta.get("name") or meta.get("experiment")
    title = f"# EWC benchmark report: {name}" if name else "# EWC benchmark report"
    sections = [title]
    if meta.get("description"):
        sections.append(str(meta["description"]))
    sections += [
        provenance_section(meta, pipeline, runs, selection_seed),
        tutorial_section(runs),
        results_section(runs),
        lambda_section(runs, meta, selection_seed),
        cost_section(runs),
        figures_section(planned_figures(runs)),
    ]
    return "\n\n".join(s for s in sections if s).rstrip("\n") + "\n"


# ============================================================================================
# Figures (one function per figure; matplotlib Agg canvas)
# ============================================================================================


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=110, metadata={"Software": None})


def _colours(runs: Sequence[Run]) -> dict[str, Any]:
    """One colour per method label, the same in every figure."""
    from matplotlib import colormaps

    labels = sorted({r.label for r in runs}, key=method_sort_key)
    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _method_legend(fig: Any, axes: Sequence[Any]) -> None:
    """One legend for every panel's methods, in method order, right of the panels."""
    seen: dict[str, Any] = {}
    for ax in axes:
        handles, names = ax.get_legend_handles_labels()
        for name, handle in zip(names, handles, strict=True):
            seen.setdefault(name, handle)
    order = sorted(seen, key=method_sort_key)
    fig.legend([seen[k] for k in order], order, loc="outside right center", fontsize=8)


def _short(task: str, width: int = 8) -> str:
    """A tick label: ``permuted-3`` -> ``p3``, ``rotated-36`` -> ``r36``; else truncated."""
    for prefix in ("permuted-", "rotated-", "split-"):
        if task.startswith(prefix):
            return prefix[0] + task[len(prefix) :]
    return task if len(task) <= width else task[: width - 1] + "…"


def plotted_labels(runs: Sequence[Run], sequence: str, bn: str) -> list[str]:
    """Methods of ``sequence`` / ``bn`` with at least one finished selected run (one panel each)."""
    return [
        lab
        for lab in method_labels(runs, sequence, bn)
        if any(r.ok for r in selected(runs, sequence, bn, lab))
    ]


def plot_heatmaps(runs: Sequence[Run], sequence: str, bn: str, path: Path) -> None:
    """Small heatmaps of the mean test accuracy matrix, one per method, shared 0-1 scale."""
    from matplotlib import colormaps

    labels = plotted_labels(runs, sequence, bn)
    tasks = _tasks(runs, sequence)
    T = len(tasks)
    rows, cols = _grid(len(labels))
    fig = _new_figure(2.7 * cols + 0.8, 2.6 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False)
    cmap = colormaps["viridis"].with_extremes(bad="#dddddd")
    image = None
    for ax, label in zip(axes.flat, labels, strict=False):
        chosen = selected(runs, sequence, bn, label)
        mat = mean_matrix(chosen)
        n = sum(r.ok for r in chosen)
        ax.set_title(f"{label}\n(n={n})", fontsize=9)
        if mat is None:
            ax.set_axis_off()
            continue
        image = ax.imshow(np.ma.masked_invalid(mat), vmin=0.0, vmax=1.0, cmap=cmap)
        ticks = range(T)
        names = [_short(t) for t in tasks] if T <= ANNOTATE_MAX_TASKS else [str(t) for t in ticks]
        ax.set_xticks(list(ticks), names, fontsize=7, rotation=30 if T > 2 else 0)
        ax.set_yticks(list(ticks), [f"after {i + 1}" for i in ticks], fontsize=7)
        if T <= ANNOTATE_MAX_TASKS:
            for i in range(T):
                for j in range(T):
                    if not np.isnan(mat[i, j]):
                        colour = "black" if mat[i, j] > 0.6 else "white"
                        ax.text(
                            j,
                            i,
                            f"{mat[i, j]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=8,
                            color=colour,
                        )
    for ax in list(axes.flat)[len(labels) :]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="test accuracy")
    fig.suptitle(f"Accuracy matrices: {sequence}, bn = {bn} (row = after task, column = task)")
    _save(fig, path)


def plot_task_curves(runs: Sequence[Run], sequence: str, bn: str, path: Path) -> None:
    """Accuracy on each task after each task, one panel per method (mean over seeds)."""
    from matplotlib import colormaps

    labels = plotted_labels(runs, sequence, bn)
    tasks = _tasks(runs, sequence)
    T = len(tasks)
    task_colours = colormaps["tab10" if T <= 10 else "tab20"]
    rows, cols = _grid(len(labels))
    fig = _new_figure(3.0 * cols + 1.4, 2.5 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    x = np.arange(1, T + 1)
    for ax, label in zip(axes.flat, labels, strict=False):
        chosen = selected(runs, sequence, bn, label)
        mat = mean_matrix(chosen)
        ax.set_title(f"{label} (n={sum(r.ok for r in chosen)})", fontsize=9)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlim(0.7, T + 0.3)
        ax.set_xticks(x)
        ax.set_xlabel("after task")
        ax.grid(alpha=0.3)
        if mat is None:
            continue
        for j in range(T):
            ys = mat[j:, j]
            colour = task_colours(j % task_colours.N)
            name = tasks[j] if T <= 10 else None
            ax.plot(x[j:], ys, marker="o", ms=4, color=colour, label=name)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy")
    for ax in list(axes.flat)[len(labels) :]:
        ax.set_axis_off()
    if T <= 10:
        handles, names = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside right center", title="task", fontsize=8)
    fig.suptitle(f"Accuracy on each task across the sequence: {sequence}, bn = {bn}")
    _save(fig, path)


def _sweep_point(run: Run) -> tuple[float, float] | None:
    """(accuracy on the last task, mean accuracy on the earlier ones), validation split."""
    if not run.ok or not run.record.acc_val:
        return None
    last = run.record.acc_val[-1]
    if any(v is None for v in last) or len(last) < 2:
        return None
    return float(last[-1]), float(np.mean(last[:-1]))


def plot_lambda_sweep(runs: Sequence[Run], sequence: str, path: Path, selection_seed: int) -> None:
    """Stability-plasticity curve: one line per penalised method through its lambdas."""
    modes = bn_modes(runs, sequence)
    colours = _colours(runs)
    fig = _new_figure(5.2 * len(modes) + 1.8, 4.4)
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    offsets = ((4, 3), (4, -10), (-22, 3), (-22, -10))
    for ax, bn in zip(axes, modes, strict=True):
        for k, label in enumerate(method_labels(runs, sequence, bn)):
            group = [
                r
                for r in runs
                if r.sequence == sequence
                and r.bn == bn
                and r.label == label
                and r.seed == selection_seed
            ]
            points = [(r, _sweep_point(r)) for r in sorted(group, key=lambda r: r.lam)]
            points = [(r, p) for r, p in points if p is not None]
            if not points:
                continue
            method = group[0].record.config.get("method")
            xs = [p[0] for _, p in points]
            ys = [p[1] for _, p in points]
            if method in PENALISED:
                ax.plot(xs, ys, marker="o", ms=4, color=colours[label], label=label)
                for r, (px, py) in points:
                    ax.annotate(
                        fmt_lambda(r.lam),
                        (px, py),
                        textcoords="offset points",
                        xytext=offsets[k % len(offsets)],
                        fontsize=7,
                        color=colours[label],
                    )
                    if r.selected:
                        ax.plot(px, py, marker="o", ms=11, mfc="none", mec=colours[label], mew=1.6)
            else:
                marker = {"baseline": "X", "joint": "*"}.get(str(method), "s")
                ax.plot(xs, ys, marker=marker, ms=9, ls="none", color=colours[label], label=label)
        ax.set_title(f"bn = {bn}", fontsize=10)
        ax.set_xlabel("accuracy on the last task (plasticity)")
        ax.set_ylabel("mean accuracy on earlier tasks (stability)")
        ax.grid(alpha=0.3)
    _method_legend(fig, axes)
    fig.suptitle(
        f"Lambda sweep: {sequence} (validation split, seed {selection_seed}; chosen λ circled)"
    )
    _save(fig, path)


def plot_cost(runs: Sequence[Run], sequence: str, path: Path) -> None:
    """Cost (estimation + penalty seconds, log scale) against test average accuracy."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    modes = bn_modes(runs, sequence)
    colours = _colours(runs)
    fig = _new_figure(4.8 * len(modes) + 1.8, 4.0)
    axes = fig.subplots(1, len(modes), squeeze=False, sharey=True)[0]
    for ax, bn in zip(axes, modes, strict=True):
        for label in method_labels(runs, sequence, bn):
            chosen = [r for r in selected(runs, sequence, bn, label) if r.ok]
            if not chosen:
                continue
            mean, half, _ = metrics.mean_ci([r.test_avg for r in chosen], CONFIDENCE)
            if mean is None:
                continue
            method = chosen[0].record.config.get("method")
            if method not in PENALISED:
                ax.axhline(mean, ls="--", lw=1.2, color=colours[label], label=label)
                continue
            cost = max(float(np.mean([run_cost_seconds(r) for r in chosen])), 1e-4)
            ax.errorbar(
                cost,
                mean,
                yerr=half or 0.0,
                fmt="o",
                ms=6,
                capsize=3,
                color=colours[label],
                label=label,
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_title(f"bn = {bn}", fontsize=10)
        ax.set_xlabel("estimation + penalty seconds per run (log)")
        ax.set_ylabel("test average accuracy")
        ax.grid(alpha=0.3, which="both")
    _method_legend(fig, axes)
    fig.suptitle(f"Cost against accuracy: {sequence} (chosen λ, mean ± 95% CI)")
    _save(fig, path)


def draw_figure(spec: FigureSpec, runs: Sequence[Run], fig_dir: Path, selection_seed: int) -> Path:
    """Draw one planned figure into ``fig_dir``."""
    path = fig_dir / spec.name
    if spec.kind == "heatmap":
        plot_heatmaps(runs, spec.sequence, str(spec.bn), path)
    elif spec.kind == "tasks":
        plot_task_curves(runs, spec.sequence, str(spec.bn), path)
    elif spec.kind == "lambda":
        plot_lambda_sweep(runs, spec.sequence, path, selection_seed)
    elif spec.kind == "cost":
        plot_cost(runs, spec.sequence, path)
    else:
        raise ValueError(f"unknown figure kind {spec.kind!r}")
    return path


# ============================================================================================
# Entry point
# ============================================================================================


class NoResultsError(UserError):
    """A results folder without a single finished run: there is nothing to report."""


def build_report(
    results_dir: Path,
    out_dir: Path,
    *,
    selection_seed: int = 0,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Build REPORT.md, runs.csv and figures/ in ``out_dir`` from the records in ``results_dir``.

    Args:
        results_dir: the sweep's results folder (``runs/*.json``; optional ``sweep.json`` and
            ``pipeline.json``).
        out_dir: where to write (created if needed). Figures from an earlier build that this one
            does not draw are removed from ``out_dir/figures``.
        selection_seed: the seed whose validation scores choose lambda.
        meta: experiment metadata; overrides the keys of ``sweep.json``.

    Returns:
        The path of REPORT.md.

    Raises:
        FileNotFoundError: no results directory or no records in it.
        ValueError: a malformed record or metadata file.
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    meta_all = load_meta(results_dir, meta)
    records = load_records(results_dir, meta_all)
    if not any(r.status == "ok" for r in records):
        counts = Counter(r.status for r in records)
        raise NoResultsError(
            f"no finished run in {results_dir} ({counts['failed']} failed, {counts['diverged']} "
            f"diverged): nothing to report, REPORT.md not written; run the sweep again "
            f"(failures outside the runs are retried) or see runs/*.json for the reasons"
        )
    runs = summarise(records, selection_seed)
    pipeline = load_pipeline(results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "runs.csv").write_text(runs_csv(runs))
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    specs = planned_figures(runs)
    wanted = {s.name for s in specs}
    for old in fig_dir.glob("*.png"):
        if old.name.startswith(FIGURE_PREFIXES) and old.name not in wanted:
            old.unlink()
    for spec in specs:
        draw_figure(spec, runs, fig_dir, selection_seed)
    report = out_dir / "REPORT.md"
    report.write_text(render_markdown(runs, meta_all, pipeline, selection_seed) + see_also(out_dir))
    return report


SEE_ALSO = {
    "STUDY.md": "how good each Fisher approximation is (full vs KFAC vs diagonal), and whether "
    "it matters for forgetting (`make study`)",
    "timing.md": "what each estimator costs in time and memory, against the naive loop and the "
    "floor (`make timing`)",
}


def see_also(out_dir: Path) -> str:
    """Links to the companion reports present in ``out_dir`` (none: empty string)."""
    lines = [
        f"- [{name}]({name}): {text}"
        for name, text in SEE_ALSO.items()
        if (out_dir / name).exists()
    ]
    return "\n## See also\n\n" + "\n".join(lines) + "\n" if lines else ""
