r"""Label modes: how the Fisher's expectation over labels is taken.

For a model with logits :math:`z = f_\theta(x) \in \mathbb{R}^C`, softmax probabilities
:math:`p`, and per-input loss :math:`\ell(y) = -\log p_y`, the gradient with respect to the logits
is :math:`\nabla_z \ell(y) = p - e_y`. Every mode is written as a *factor* :math:`S \in
\mathbb{R}^{C \times K}` whose columns are (weighted) logit gradients, so that the per-input
Fisher is :math:`F(x) = J^\top S S^\top J` with :math:`J = \partial z / \partial \theta`:

- ``exact``: :math:`S S^\top = \mathbb{E}_{y \sim p}[(p - e_y)(p - e_y)^\top]
  = \operatorname{diag}(p) - p p^\top`, with columns :math:`S_{:,c} = \sqrt{p_c}\,(p - e_c)`
  (:math:`K = C`). This factor never subtracts cumulative probabilities, so it stays finite for
  confident predictions.
- ``mc``: :math:`K` labels :math:`y_s \sim p`, columns :math:`(p - e_{y_s}) / \sqrt{K}` (for
  :math:`K \ge C` the same matrix with one count-weighted column per class).
- ``empirical``: the dataset label, one column :math:`p - e_y`.
- ``argmax``: the most likely label, one column :math:`p - e_{\arg\max p}` (the source
  tutorial's "true" Fisher).

Numerics: the entry :math:`p_y - 1` is computed as :math:`-\sum_{c \ne y} p_c`, a sum of positive
terms, so that a top probability of 0.9999 in float32 loses no relative precision.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch


def _rest_mass(probs: torch.Tensor) -> torch.Tensor:
    r""":math:`1 - p_c = \sum_{j \ne c} p_j` for every class, without cancellation. ``[n, C]``."""
    c = probs.shape[1]
    off_diagonal = ~torch.eye(c, dtype=torch.bool, device=probs.device)
    return (probs[:, None, :] * off_diagonal).sum(-1)


def logit_gradients(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Gradients :math:`p - e_y` of :math:`-\log p_y` with respect to the logits.

    Args:
        probs: softmax probabilities ``[n, C]``.
        labels: labels ``[K, n]`` (long).

    Returns:
        ``[K, n, C]``; the label entry is computed as :math:`-\sum_{c \ne y} p_c`.
    """
    k = labels.shape[0]
    grads = probs.expand(k, *probs.shape).clone()
    rest = _rest_mass(probs).expand(k, *probs.shape)
    index = labels.unsqueeze(-1)
    grads.scatter_(-1, index, -rest.gather(-1, index))
    return grads


class LabelMode(ABC):
    """A way to take the expectation over labels. Implement ``columns`` and ``factor``.

    Attributes:
        name: the mode's name, the suffix of estimator names (``diag-exact``).
        options: estimator options the mode takes (see ``options.OPTIONS``), beyond the base ones.
    """

    name: str
    needs_targets: bool = False
    options: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> LabelMode:
        """The mode configured by an estimator's resolved options (default: takes none)."""
        return cls()

    @abstractmethod
    def columns(self, n_classes: int) -> int:
        """K, the number of factor columns (backpropagated vectors) per input."""

    @abstractmethod
    def factor(self, logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """The factor :math:`S` for each input, as ``[K, n, C]`` (column index first)."""


class Exact(LabelMode):
    r"""True Fisher, summed over all classes: :math:`S_{:,c} = \sqrt{p_c}(p - e_c)`."""

    name = "exact"

    def columns(self, n_classes: int) -> int:
        """One column per class."""
        return n_classes

    def factor(self, logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        r"""Columns :math:`\sqrt{p_c}(p - e_c)`, c = 0..C-1, as ``[C, n, C]``."""
        probs = logits.softmax(-1)
        n, c = probs.shape
        classes = torch.arange(c, device=probs.device).unsqueeze(1).expand(c, n)
        grads = logit_gradients(probs, classes)
        return grads * probs.T.sqrt().unsqueeze(-1)


class MonteCarlo(LabelMode):
    r"""True Fisher, sampled: :math:`K` labels :math:`y_s \sim p` per input.

    :math:`S S^\top = \frac{1}{K}\sum_s (p - e_{y_s})(p - e_{y_s})^\top`. With :math:`K < C`
    the columns are :math:`(p - e_{y_s})/\sqrt{K}`; with :math:`K \ge C` the same matrix is
    written with one column per class, :math:`\sqrt{c_y/K}\,(p - e_y)` where :math:`c_y` counts
    the draws of label y, so the cost never exceeds the exact mode's.
    """

    name = "mc"
    options = ("mc_samples", "generator")

    def __init__(self, mc_samples: int = 1, generator: torch.Generator | None = None) -> None:
        self.mc_samples = mc_samples
        self.generator = generator

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MonteCarlo:
        """``mc_samples`` labels per input, drawn with ``generator``."""
        return cls(options["mc_samples"], options["generator"])

    def columns(self, n_classes: int) -> int:
        """``min(mc_samples, C)`` columns."""
        return min(self.mc_samples, n_classes)

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """Draw ``mc_samples`` labels per input from ``probs`` ``[n, C]``; returns ``[K, n]``."""
        gen = self.generator
        source = probs if gen is None else probs.to(gen.device)
        labels = torch.multinomial(source, self.mc_samples, replacement=True, generator=gen)
        return labels.T.to(probs.device)

    def factor(self, logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """The sampled factor, ``[min(K, C), n, C]``."""
        probs = logits.softmax(-1)
        labels = self.sample(probs)
        n, c = probs.shape
        if self.mc_samples < c:
            return logit_gradients(probs, labels) / self.mc_samples**0.5
        counts = torch.zeros(n, c, dtype=probs.dtype, device=probs.device)
        counts.scatter_add_(1, labels.T, torch.ones_like(labels.T, dtype=probs.dtype))
        classes = torch.arange(c, device=probs.device).unsqueeze(1).expand(c, n)
        weights = (counts / self.mc_samples).sqrt().T.unsqueeze(-1)  # [C, n, 1]
        return logit_gradients(probs, classes) * weights


class Empirical(LabelMode):
    """Empirical Fisher: the dataset label, one column :math:`p - e_y`."""

    name = "empirical"
    needs_targets = True

    def columns(self, n_classes: int) -> int:
        """One column."""
        return 1

    def factor(self, logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """:math:`p - e_y` for the dataset labels, as ``[1, n, C]``."""
        assert targets is not None
        return logit_gradients(logits.softmax(-1), targets.unsqueeze(0))


class Argmax(LabelMode):
    r"""The model's most likely label, one column :math:`p - e_{\arg\max p}`."""

    name = "argmax"

    def columns(self, n_classes: int) -> int:
        """One column."""
        return 1

    def factor(self, logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        r""":math:`p - e_{\hat y}` with :math:`\hat y = \arg\max_c z_c`, as ``[1, n, C]``."""
        return logit_gradients(logits.softmax(-1), logits.argmax(-1).unsqueeze(0))


MODES: dict[str, type[LabelMode]] = {m.name: m for m in (Exact, MonteCarlo, Empirical, Argmax)}
"""Label modes by name, for structure declarations (see ``registry``)."""
