"""Tiny float64 models as test cases: data, not loops."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class MultiHead(nn.Module):
    """Shared trunk, one head per task; ``forward_head(k)`` exposes one head."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(5, 3), nn.Linear(5, 3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads[0](self.trunk(x))


def head_one(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.heads[1](model.trunk(x))


class Scale(nn.Module):
    """A custom layer with its own parameter: no closed form, uses torch.func."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.log_scale.exp()


class Shared(nn.Module):
    """A Linear applied twice (weight sharing): no closed form, uses torch.func."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.shared = nn.Linear(5, 5)
        self.norm = nn.LayerNorm(5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        return self.out(self.norm(h))


def mlp_bn() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(4, 5),
        nn.ReLU(),
        nn.BatchNorm1d(5),
        nn.Linear(5, 4),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(4),
        nn.Linear(4, 3),
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.BatchNorm2d(3),
        nn.Conv2d(3, 2, 2, stride=2, bias=False),
        nn.Tanh(),
        nn.Conv2d(2, 2, 2, dilation=1, padding="same"),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def generic() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), Scale(5), nn.LayerNorm(5), nn.Linear(5, 3))


def single_linear() -> nn.Module:
    return nn.Linear(4, 3)


@dataclass
class Case:
    """A model factory, input shape and a seed; ``forward`` for multi-head models."""

    name: str
    build: Any
    input_shape: tuple[int, ...]
    n: int = 7
    seed: int = 0
    forward: Any = None
    kfac_linear_only: bool = False
    extra: dict = field(default_factory=dict)

    def make(
        self, dtype: torch.dtype = torch.float64
    ) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """Model with non-trivial BatchNorm statistics and parameters, inputs, targets."""
        g = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        model = self.build().to(dtype)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=dtype))
            model.train()
            for _ in range(3):  # move BatchNorm running statistics away from (0, 1)
                model(torch.randn(16, *self.input_shape, generator=g, dtype=dtype) * 1.5 + 0.2)
        model.eval()
        x = torch.randn(self.n, *self.input_shape, generator=g, dtype=dtype)
        n_classes = 3
        y = torch.randint(0, n_classes, (self.n,), generator=g)
        return model, x, y


CASES = [
    Case("mlp_bn", mlp_bn, (2, 2)),
    Case("cnn", cnn, (2, 4, 4)),
    Case("multi_head", MultiHead, (4,), forward=head_one),
    Case("generic", generic, (4,)),
    Case("shared", Shared, (4,)),
]
CASE_IDS = [c.name for c in CASES]
