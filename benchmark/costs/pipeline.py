"""The input pipeline: one training epoch with the tutorial's DataLoader vs in-memory tensors.

The source tutorial feeds MNIST through ``torchvision.datasets.MNIST(transform=ToTensor())`` and a
``DataLoader`` (batch 100, shuffled): every item is converted on every epoch, and it steps a
plain ``torch.optim.Adam``. ewc-bench keeps each split in memory as one tensor, slices batches
and steps the harness's optimizer (``training.make_optimizer``: Adam, multi-tensor) with the
harness's step (``training.train_step``). Both train
the same network (``tutorial-mlp``, lr 1e-3, batch 100) for one epoch on the 60,000 MNIST
training images, in the same process; a third measurement iterates the DataLoader without
training (the time spent only producing batches). The report states the ratio.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from .. import provenance
from ..data import load_split, resolve_root
from ..models import make_model
from ..seeds import generator, seed_hash
from ..training import make_optimizer, plain_forward, train_step

BATCH = 100


def _fresh(seed: int, tutorial: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The network, and the tutorial's optimizer or the harness's."""
    torch.manual_seed(seed_hash(seed, "pipeline-init"))
    model = make_model("tutorial-mlp").train()
    if tutorial:
        return model, torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, make_optimizer("adam", 1e-3, model)


def dataloader_epoch(
    root: str | None, seed: int = 0, train: bool = True, limit: int | None = None
) -> float:
    """Seconds for one epoch through the tutorial's DataLoader + ToTensor (trains if ``train``)."""
    ds: Dataset = datasets.MNIST(
        str(resolve_root(root)), train=True, download=False, transform=transforms.ToTensor()
    )
    if limit is not None:
        ds = Subset(ds, range(min(limit, len(ds))))
    loader = DataLoader(
        ds, batch_size=BATCH, shuffle=True, generator=generator(seed, "pipeline-order")
    )
    model, opt = _fresh(seed, tutorial=True)
    start = time.perf_counter()
    for x, y in loader:
        if train:
            train_step(model, opt, plain_forward, x, y)
    return time.perf_counter() - start


def tensor_epoch(root: str | None, seed: int = 0, limit: int | None = None) -> float:
    """Seconds for one epoch from in-memory tensors (ewc-bench's path)."""
    split = load_split("mnist", True, root)
    if limit is not None:
        split = split.subset(torch.arange(min(limit, len(split))))
    model, opt = _fresh(seed, tutorial=False)
    start = time.perf_counter()
    perm = torch.randperm(len(split), generator=generator(seed, "pipeline-order"))
    for index in perm.split(BATCH):
        train_step(model, opt, plain_forward, split.float_inputs(index), split.targets[index])
    return time.perf_counter() - start


def measure(root: str | None, seed: int = 0, limit: int | None = None) -> dict[str, Any]:
    """Both epochs and the loader-only pass (on the first ``limit`` images, default all)."""
    load_split("mnist", True, root)  # reading the IDX file is not part of an epoch
    tensors = tensor_epoch(root, seed, limit)
    loader = dataloader_epoch(root, seed, limit=limit)
    batches_only = dataloader_epoch(root, seed, train=False, limit=limit)
    return {
        "dataloader_seconds": loader,
        "dataloader_batches_only_seconds": batches_only,
        "tensor_seconds": tensors,
        "ratio": loader / tensors,
        "images": limit or 60000,
        "machine": provenance.machine(),
        "git_sha": provenance.git_sha(),
        "date": provenance.now(),
    }
