"""Shared fixtures: tiny float64 cases, and the real-data root for tests that need MNIST."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.cases import CASE_IDS, CASES


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(params=CASES, ids=CASE_IDS)
def case(request):
    return request.param


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The datasets root from $EWC_BENCH_DATA; skip (visibly) if absent, fail under CI=true."""
    root = os.environ.get("EWC_BENCH_DATA", "")
    path = Path(root) if root else Path("data")
    if not (path / "MNIST" / "raw").is_dir():
        msg = f"real datasets not found under {path.resolve()} (set EWC_BENCH_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + "; CI=true requires them")
        pytest.skip(msg)
    return path
