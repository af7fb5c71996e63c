"""The harness's run records as results: loaded, labelled, selected, ordered, and costed.

This is the view of the records that both the reports (``benchmark.report``) and the measuring
code (``benchmark.costs.scaling``'s time split) need; it renders nothing.

- Loading: ``load_records`` (the sweep's own runs), ``load_meta`` (``sweep.json``) and
  ``load_pipeline`` (``pipeline.json``).
- Labels and order: ``method_label`` (``baseline``, ``l2``, ``ewc <estimator>``, ...),
  ``display_labels`` (a ``(setting=value, ...)`` suffix where two runs of one sequence share a
  label but differ in another setting), and the sort keys every table uses.
- ``summarise``: one ``Run`` per record, with lambda chosen per group on the validation split
  (``selection``) and the metrics of its accuracy matrices (``metrics``).
- Selectors over runs (sequences, bn modes, method labels, the selected runs of one method).
- Cost: the seconds the penalty took (``penalty_seconds``, the one place where the penalty's
  share of a training step is computed), a run's estimation + penalty seconds, and the per-method
  means of the cost table (``method_cost``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import metrics
from .config import BN_MODES, PENALISED, SEQUENCES
from .methods import label_of, sort_key
from .models import make_model, n_parameters
from .records import RunRecord, quarantine, read_records
from .selection import TEST, choose, family_key, group_key, is_selected, lr_edges, role
from .tasks import heads_of

FLOAT32_BYTES = 4

VARIANT_IGNORE = ("lam", "seed", "device", "bn", "sequence", "optimizer")
"""Settings that never disambiguate a method label: the tables' own axes and the optimizer
(``section_of``). ``lr`` does not either where it was chosen from an ``lr_grid`` (one lr per
family is tested, ``selection.choose``); elsewhere it does."""
OPTIMIZER_JOIN, DEFAULT_OPTIMIZER = " with ", "adam"


@dataclass(frozen=True)
class Run:
    """One record as the reports see it: its place in the tables and its derived numbers.

    Attributes:
        record: the record itself.
        sequence: the run's report section (``section_of``): its task sequence, followed by
            `` on <network>`` unless it trains the tutorial's network.
        bn: BatchNorm mode.
        label: the method's display label (``method_label`` plus a variant suffix if needed).
        lam: penalty strength lambda.
        seed: root seed.
        group: the selection group key (``selection.group_key``).
        selected: whether the run is a test run at its group's chosen lambda.
        val_avg: validation average accuracy (mean of the last row), None if undefined.
        test_avg: test average accuracy.
        forgetting: test forgetting (``metrics.forgetting``).
        bwt: test backward transfer (``metrics.backward_transfer``).
        at_edge: a penalised run whose lambda is the smallest or the largest its group tried on
            the selection seeds, so that the chosen value may not be bracketed (``grid_edges``).
        role: ``selection`` (its seed is a selection seed: it only chooses lambda) or ``test``.
        lr_at_edge: the run's family tried several learning rates (``lrs``) and this run's is
            the smallest or the largest of them (``selection.lr_edges``).
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
    at_edge: bool = False
    role: str = TEST
    lr_at_edge: bool = False

    @property
    def ok(self) -> bool:
        """Whether the run finished (neither diverged nor failed)."""
        return self.record.status == "ok"

    @property
    def diverged(self) -> bool:
        """Whether the run's loss became NaN/inf."""
        return self.record.status == "diverged"


# -- loading -----------------------------------------------------------------------------------


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


# -- labels and order --------------------------------------------------------------------------


def method_label(config: dict[str, Any]) -> str:
    """``RunConfig.label`` computed from a config dict, without re-validating the config.

    ``baseline``, ``l2``, ``ewc <estimator>``, ``ewc-online <estimator>``, ``mas-online``, ...
    (``benchmark.methods.label_of``).
    """
    return label_of(config)


def method_sort_key(label: str) -> tuple[int, int, int, str]:
    """Report order of method labels (``benchmark.methods.sort_key``)."""
    return sort_key(label)


def sequence_sort_key(sequence: str) -> tuple[int, str]:
    """The order of ``config.SEQUENCES`` (by a section's sequence, then its network).

    Unknown sequences come after, alphabetically.
    """
    order, base = list(SEQUENCES), sequence.split(NETWORK_JOIN)[0].split(OPTIMIZER_JOIN)[0]
    return (order.index(base) if base in order else len(order), sequence)


TUTORIAL_NETWORK = "tutorial-mlp"
"""The network whose sections are named by their sequence alone (the source tutorial's)."""
NETWORK_JOIN = " on "


def model_text(config: dict[str, Any]) -> str:
    """``tutorial-mlp``, ``mlp hidden=16``: a run's network and its options."""
    options = config.get("model_options") or {}
    return " ".join([str(config.get("model")), *(f"{k}={v}" for k, v in sorted(options.items()))])


def section_of(config: dict[str, Any]) -> str:
    """A run's report section: its sequence, ``on`` its network unless the tutorial's.

    Runs on different networks are never compared seed by seed, nor share a table:
    ``mnist-fmnist`` (the tutorial network) and ``mnist-fmnist on mlp hidden=16``. Nor are runs
    with another optimizer than Adam (the tutorial's): ``... on mlp hidden=16 with sgd``.
    """
    network = model_text(config)
    sequence = str(config.get("sequence"))
    section = sequence if network == TUTORIAL_NETWORK else f"{sequence}{NETWORK_JOIN}{network}"
    optimizer = str(config.get("optimizer", DEFAULT_OPTIMIZER))
    return section if optimizer == DEFAULT_OPTIMIZER else f"{section}{OPTIMIZER_JOIN}{optimizer}"


def bn_sort_key(bn: str) -> tuple[int, str]:
    """``freeze`` first (the tutorial's published numbers), then ``update``."""
    order = ["freeze", *[m for m in BN_MODES if m != "freeze"]]
    return (order.index(bn) if bn in order else len(order), bn)


def setting_text(value: Any) -> str:
    """A config value as labels and reports show it (compact JSON for dicts and lists)."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _variant_key(config: dict[str, Any]) -> str:
    chosen_lr = ("lr",) if config.get("lr_grid") else ()
    rest = {k: v for k, v in config.items() if k not in VARIANT_IGNORE + chosen_lr}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"))


def display_labels(records: Sequence[RunRecord]) -> dict[str, str]:
    """``run_id -> label``; a suffix names the settings that tell apart same-label variants.

    Within a sequence, runs whose ``method_label`` agree but whose configs differ in anything
    but lambda, seed, device and bn are different variants: each gets ``(setting=value, ...)``
    for the settings that differ among them.
    """
    variants: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in records:
        key = (section_of(r.config), method_label(r.config))
        variants.setdefault(key, {})[_variant_key(r.config)] = r.config
    labels: dict[str, str] = {}
    for r in records:
        key = (section_of(r.config), method_label(r.config))
        configs = variants[key]
        label = key[1]
        if len(configs) > 1:
            tuned = any(c.get("lr_grid") for c in configs.values())
            fields = sorted(
                f
                for f in set().union(*configs.values()) - {*VARIANT_IGNORE, *("lr",) * tuned}
                if len({setting_text(c.get(f)) for c in configs.values()}) > 1
            )
            suffix = ", ".join(f"{f}={setting_text(r.config.get(f))}" for f in fields)
            label = f"{label} ({suffix})"
        labels[r.run_id] = label
    return labels


# -- the runs ----------------------------------------------------------------------------------


def _metric(fn: Callable[[Any], float | None], matrix: list, record: RunRecord) -> float | None:
    if record.status == "failed" or not matrix:
        return None
    try:
        return fn(matrix)
    except ValueError as err:
        raise ValueError(f"run {record.run_id}: {err}") from err


def summarise(records: Iterable[RunRecord], selection_seeds: Collection[int]) -> list[Run]:
    """The reports' view of every record, sorted (sequence, bn, method, lambda, seed, id).

    Lambda (and, in a family of several, lr) is chosen with ``selection.choose`` on the
    validation split of the ``selection_seeds`` (required: a sweep's are in its ``sweep.json``,
    ``selection.selection_seeds_of``); ``Run.selected`` follows ``selection.is_selected`` (test
    runs only).
    """
    records = list(records)
    chosen = choose(records, selection_seeds)
    labels = display_labels(records)
    edges = grid_edges(records, selection_seeds)
    lr_ends = lr_edges(records)
    runs = []
    for r in records:
        c = r.config
        runs.append(
            Run(
                record=r,
                sequence=section_of(c),
                bn=str(c.get("bn")),
                label=labels[r.run_id],
                lam=float(c.get("lam", 0.0)),
                seed=int(c.get("seed", 0)),
                group=group_key(c),
                selected=is_selected(r, chosen, selection_seeds),
                val_avg=_metric(metrics.average_accuracy, r.acc_val, r),
                test_avg=_metric(metrics.average_accuracy, r.acc_test, r),
                forgetting=_metric(metrics.forgetting, r.acc_test, r),
                bwt=_metric(metrics.backward_transfer, r.acc_test, r),
                at_edge=float(c.get("lam", 0.0)) in edges.get(group_key(c), ()),
                role=role(int(c.get("seed", 0)), selection_seeds),
                lr_at_edge=float(c.get("lr", 0.0)) in lr_ends.get(family_key(c), ()),
            )
        )
    return sorted(runs, key=run_sort_key)


def representation(record: RunRecord) -> str:
    """The representation of the run's last curvature (``Curvature.summary``), '' without one.

    Records made before representations were recorded: derived from the estimator and the
    curvature's bytes (a full Fisher of R x P float32 entries is a factor of R rows, of P x P a
    dense matrix; P from the run's network).
    """
    known = [x for x in record.representations if x]
    if known:
        return known[-1]
    c = record.config
    name = "identity" if c.get("method") == "l2" else c.get("estimator")
    if c.get("method") == "mas":
        return "diag"
    if not name or not record.curvature_bytes:
        return ""
    if not str(name).startswith("full-"):
        return str(name).split("-")[0]
    p = network_facts(c)[0]
    rows, rest = divmod(max(record.curvature_bytes), FLOAT32_BYTES * p)
    if rest or not rows:
        return "full"
    return "full-dense" if rows == p else f"full-factor {rows} rows"


def network_facts(config: dict[str, Any]) -> tuple[int, bool]:
    """``(P, has BatchNorm)`` of the network a run config trains."""
    keys = ("sequence", "n_tasks", "model", "model_options")
    return _network_facts(json.dumps({k: config.get(k) for k in keys}, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _network_facts(network_json: str) -> tuple[int, bool]:
    """The network built on the CPU (never trained): its P, and whether it has BatchNorm."""
    c = json.loads(network_json)
    n_heads, n_outputs = heads_of(str(c.get("sequence")), c.get("n_tasks"))
    with torch.device("cpu"):
        model = make_model(str(c.get("model")), n_outputs, n_heads, c.get("model_options") or {})
    norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return n_parameters(model), norm


def grid_edges(
    records: Iterable[RunRecord], selection_seeds: Collection[int]
) -> dict[str, tuple[float, ...]]:
    """``group key -> (smallest, largest)`` lambda tried on the selection seeds, penalised only.

    A choice at one of them is not bracketed by the grid: the best value may lie beyond it.
    """
    tried: dict[str, set[float]] = {}
    for r in records:
        c = r.config
        if c.get("method") in PENALISED and c.get("seed") in selection_seeds:
            tried.setdefault(group_key(c), set()).add(float(c.get("lam", 0.0)))
    return {key: (min(lams), max(lams)) for key, lams in tried.items()}


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


# -- selectors ---------------------------------------------------------------------------------


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


def task_names(runs: Sequence[Run], sequence: str) -> list[str]:
    """The task names of ``sequence``, in training order (from the first record that has them)."""
    for r in runs:
        if r.sequence == sequence and r.record.tasks:
            return list(r.record.tasks)
    return []


def task_orders(runs: Sequence[Run], sequence: str) -> dict[int, list[str]]:
    """``test seed -> task names in training order`` of ``sequence`` (the order is the seed's)."""
    orders: dict[int, list[str]] = {}
    for r in runs:
        if r.sequence == sequence and r.role == TEST and r.record.tasks:
            orders.setdefault(r.seed, list(r.record.tasks))
    return dict(sorted(orders.items()))


# -- cost --------------------------------------------------------------------------------------


def penalty_seconds(record: RunRecord) -> list[float]:
    """Per task, the seconds of its training that the penalty took.

    Task t's share is penalty_ms[t] / (step_ms[t] + penalty_ms[t]), the share of a penalised step
    that the penalty costs (both measured by the harness after the task; a negative penalty
    measurement counts as 0), applied to the task's training time; 0 where either is missing.
    """
    out = []
    for t, train in enumerate(record.train_seconds):
        pen = record.penalty_ms[t] if t < len(record.penalty_ms) else None
        step = record.step_ms[t] if t < len(record.step_ms) else None
        if pen is not None and step is not None and pen + step > 0:
            out.append(float(train) * max(pen, 0.0) / (step + max(pen, 0.0)))
        else:
            out.append(0.0)
    return out


def run_cost_seconds(run: Run) -> float:
    """Estimation seconds plus the time the penalty took (``penalty_seconds``), over all tasks."""
    record = run.record
    return float(sum(record.estimate_seconds)) + sum(penalty_seconds(record))


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
    penalty per step counts the tasks that had a penalty (penalty_ms not None); curvature bytes
    are the largest per-task value. The percentage is computed one way only, from the two means
    it sits between in the cost table: ``100 * penalty_ms / step_ms`` (so that a reader can
    check it from the table's own columns).
    """
    done = [r.record for r in runs if r.ok]
    est, pen, step, nbytes = [], [], [], []
    for r in done:
        fitted = [s for s in r.estimate_seconds if s and s > 0]
        est.append(sum(fitted) / len(fitted) if fitted else 0.0)
        pairs = [(p, s) for p, s in zip(r.penalty_ms, r.step_ms, strict=False) if p is not None]
        pen.append(_mean_or_none(p for p, _ in pairs))
        step.append(_mean_or_none(r.step_ms))
        nbytes.append(max(r.curvature_bytes) if r.curvature_bytes else None)
    penalty_ms, step_ms = _mean_or_none(pen), _mean_or_none(step)
    return Cost(
        n=len(done),
        estimate_per_task_s=_mean_or_none(est),
        penalty_ms=penalty_ms,
        penalty_pct=None if penalty_ms is None or not step_ms else 100.0 * penalty_ms / step_ms,
        step_ms=step_ms,
        curvature_bytes=_mean_or_none(nbytes),
        peak_rss_mb=_mean_or_none(r.peak_rss_mb for r in done),
    )
