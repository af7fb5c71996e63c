# ewc-bench: the front door. `make help` lists the targets.
# Every target depends on `install`, which creates .venv on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Datasets root (torchvision layout: ROOT/MNIST/raw, ROOT/FashionMNIST/raw).
DATA_ROOT ?= $(if $(EWC_BENCH_DATA),$(EWC_BENCH_DATA),./data)
export EWC_BENCH_DATA := $(DATA_ROOT)
# DOWNLOAD=1 (default): `make reproduce` downloads missing datasets into DATA_ROOT through
# torchvision (checksums verified); DOWNLOAD=0 keeps it offline (missing data is then an error).
DOWNLOAD ?= 1
DOWNLOAD_FLAG := $(if $(filter 1 yes true,$(DOWNLOAD)),--download,--no-download)
# Torch threads of the cost measurements (timing, scaling, bench) and of a sweep run with JOBS=1:
# two by default, the reference machine's cores; override for bigger machines.
THREADS ?= 2
export OMP_NUM_THREADS := $(THREADS)
BENCH_JSON ?= reports/bench/estimators.json
# Saved pytest-benchmark runs to compare against (one folder per machine id inside).
BENCH_STORAGE ?= reports/bench/baseline
# A benchmark whose best round (min) is this much slower than the baseline's fails
# `make bench-compare`. min is the statistic least moved by other load on shared cores; on the
# 2-core reference machine medians of unchanged code moved by up to 45% between runs.
COMPARE_FAIL ?= min:50%

.PHONY: help install data-check test test-all bench bench-baseline bench-compare timing scaling costs reproduce reproduce-quick report ablation full-fisher online-kfac study lint format clean

help:  ## Show this help.
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install ewc-bench with its dev tools.

# Runs with the system Python before anything is installed: a missing or corrupt dataset (or,
# with DOWNLOAD=1, no reachable download mirror) fails here, in one line, before the install.
data-check:  ## Check the datasets under DATA_ROOT (sizes, IDX headers, MD5s; no venv needed).
	@$(PYTHON) -m benchmark.datacheck --data-root $(DATA_ROOT) $(if $(filter --download,$(DOWNLOAD_FLAG)),--download)

test: install  ## Run the test suite (fast; real-data tests need DATA_ROOT).
	$(PY) -m pytest -m "not slow"

test-all: install  ## Run every test, including the slow, tight statistical ones.
	$(PY) -m pytest

bench: install  ## pytest-benchmark timing suite; JSON saved under reports/bench/.
	@mkdir -p $(dir $(BENCH_JSON))
	$(PY) -m pytest tests/bench --benchmark-enable --benchmark-only \
		--benchmark-json=$(BENCH_JSON) -p no:cacheprovider

bench-baseline: install  ## `make bench`, also saved as this machine's baseline (BENCH_STORAGE).
	@mkdir -p $(dir $(BENCH_JSON))
	$(PY) -m pytest tests/bench --benchmark-enable --benchmark-only -p no:cacheprovider \
		--benchmark-json=$(BENCH_JSON) \
		--benchmark-storage=file://$(BENCH_STORAGE) --benchmark-save=baseline

bench-compare: install  ## Run the suite against the saved baseline; fail on a regression (COMPARE_FAIL).
	$(PY) -m benchmark.costs.bench_baseline --storage $(BENCH_STORAGE)
	$(PY) -m pytest tests/bench --benchmark-enable --benchmark-only -p no:cacheprovider \
		--benchmark-storage=file://$(BENCH_STORAGE) --benchmark-compare \
		--benchmark-compare-fail=$(COMPARE_FAIL) --benchmark-group-by=group

timing: install  ## Estimator timing and peak-memory table -> reports/timing.md.
	$(PY) -m benchmark timing --data-root $(DATA_ROOT) --out reports

# Runs at once in `make reproduce`: auto = one per available core, each with cores / JOBS torch
# threads. On the 2-core reference machine two runs of one thread each finished the quick
# protocol 1.48x faster than one run of two threads (README); JOBS=1 runs in this process.
JOBS ?= auto
# Runs trained together as one stacked model (runs that differ only in lambda and seed); 1 = each
# run alone. Default 1: with JOBS=auto the tutorial network gains nothing from it (scaling.md).
GROUP_SIZE ?= 1
RESULTS ?= results
# Where the runs of reproduce and reproduce-quick execute: process (a local process pool of JOBS
# runs, the default) or dask (pip install -e '.[distributed]'): SCHEDULER=tcp://HOST:PORT connects
# to a running Dask scheduler, SCHEDULER=local:N starts N single-threaded workers for the sweep;
# empty: $$DASK_SCHEDULER_ADDRESS, else local:JOBS. README: "Sweeps on many cores, GPUs or a cluster".
EXECUTOR ?= process
SCHEDULER ?=
EXECUTOR_FLAGS := --executor $(EXECUTOR) $(if $(SCHEDULER),--scheduler $(SCHEDULER))

# The experiments that train with the true full Fisher: their answer ends REPORT.md's verdict
# (results they have not made yet are named there with the command that makes them).
COMPANIONS := --companion $(RESULTS)/full-fisher --companion $(RESULTS)/ablation

# When make read this Makefile: `make reproduce`'s last step states the time from here to its end.
REPRODUCE_START := $(shell date +%s)

reproduce: data-check install  ## Default protocol: sweep (resumable) + checks + study + report -> reports/.
	$(PY) -m benchmark reproduce --experiment default --data-root $(DATA_ROOT) $(DOWNLOAD_FLAG) \
		--results $(RESULTS)/default --out reports --readme README.md --jobs $(JOBS) \
		--group-size $(GROUP_SIZE) $(EXECUTOR_FLAGS)
	$(PY) -m benchmark threads --results $(RESULTS)/default --data-root $(DATA_ROOT)
	$(PY) -m benchmark grouped --results $(RESULTS)/default --data-root $(DATA_ROOT)
	$(MAKE) study
	$(PY) -m benchmark report --results $(RESULTS)/default --out reports --readme README.md \
		--started $(REPRODUCE_START) $(COMPANIONS)

costs: install  ## What each estimator costs: `make timing` then `make scaling` (run on an idle machine).
	$(MAKE) timing
	$(MAKE) scaling

scaling: install  ## Cost vs N, width, depth, classes and past tasks; dense limit -> reports/scaling.md.
	$(PY) -m benchmark scaling --results $(RESULTS)/default --out reports

study: install  ## Approximation study (full vs KFAC vs diagonal) -> reports/STUDY.md, study.csv.
	$(PY) -m benchmark study --data-root $(DATA_ROOT) --results $(RESULTS)/default --out reports

reproduce-quick: data-check install  ## The same pipeline scaled down (< 5 min) -> reports/quick/.
	$(PY) -m benchmark reproduce --experiment quick --data-root $(DATA_ROOT) $(DOWNLOAD_FLAG) \
		--results $(RESULTS)/quick --out reports/quick --jobs $(JOBS) \
		--group-size $(GROUP_SIZE) $(EXECUTOR_FLAGS)

report: install  ## Rebuild reports/ (and README's verdict) from the stored records alone.
	$(PY) -m benchmark report --results $(RESULTS)/default --out reports --readme README.md \
		$(COMPANIONS)

ablation: data-check install  ## KFAC ablation and exact-Fisher control on split MNIST, 20 test seeds, diagnostics (~1 h) -> reports/ablation/.
	$(PY) -m benchmark reproduce --experiment ablation --data-root $(DATA_ROOT) \
		$(DOWNLOAD_FLAG) --results $(RESULTS)/ablation --out reports/ablation \
		--jobs $(JOBS) --group-size $(GROUP_SIZE) $(EXECUTOR_FLAGS)
	$(PY) -m benchmark threads --results $(RESULTS)/ablation --data-root $(DATA_ROOT)
	$(PY) -m benchmark report --results $(RESULTS)/ablation --out reports/ablation

full-fisher: data-check install  ## EWC with the true dense full Fisher, row budget N = 20/200/1000, permuted-mnist (~2.5-3 h) -> reports/full-fisher/.
	$(PY) -m benchmark reproduce --experiment full-fisher --data-root $(DATA_ROOT) \
		$(DOWNLOAD_FLAG) --results $(RESULTS)/full-fisher --out reports/full-fisher \
		--jobs $(JOBS) --group-size 1 $(EXECUTOR_FLAGS)

online-kfac: data-check install  ## Online KFAC, each rule for combining tasks, on permuted MNIST (~15 min) -> reports/online-kfac/.
	$(PY) -m benchmark reproduce --experiment online-kfac --data-root $(DATA_ROOT) \
		$(DOWNLOAD_FLAG) --results $(RESULTS)/online-kfac --out reports/online-kfac \
		--jobs $(JOBS) --group-size $(GROUP_SIZE) $(EXECUTOR_FLAGS)

lint: install  ## ruff check and format check.
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install  ## Apply ruff's formatting and safe fixes.
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:  ## Remove caches (keeps .venv and results).
	rm -rf .pytest_cache .ruff_cache .benchmarks build *.egg-info
