"""The parameter layout that fixes what a flat vector of length P means.

The layout is the model's trainable ``named_parameters()``, each flattened row-major and
concatenated in that order. ``dense()``, ``matvec`` and every flat vector use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of the trainable parameters in the flat vector.

    Attributes:
        names: parameter names in ``named_parameters()`` order.
        shapes: their shapes.
        offsets: start of each parameter in the flat vector.
        dtype: floating dtype of the parameters.
        device: device of the parameters.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, model: nn.Module) -> ParamLayout:
        """Build the layout of ``model``'s trainable parameters."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(
                "the model has no trainable parameters (requires_grad=True): "
                "there is no curvature to estimate"
            )
        dtypes = {p.dtype for _, p in named}
        devices = {p.device for _, p in named}
        if len(dtypes) != 1 or len(devices) != 1:
            raise ValueError(
                "all trainable parameters must share one dtype and device; found dtypes "
                f"{sorted(map(str, dtypes))} and devices {sorted(map(str, devices))}"
            )
        dtype = dtypes.pop()
        if not dtype.is_floating_point:
            raise ValueError(f"trainable parameters must be floating point, not {dtype}")
        offsets, total = [], 0
        for _, p in named:
            offsets.append(total)
            total += p.numel()
        return cls(
            names=tuple(n for n, _ in named),
            shapes=tuple(p.shape for _, p in named),
            offsets=tuple(offsets),
            dtype=dtype,
            device=devices.pop(),
        )

    @property
    def numel(self) -> int:
        """P, the length of the flat parameter vector."""
        return self.offsets[-1] + self.shapes[-1].numel()

    @property
    def itemsize(self) -> int:
        """Bytes per scalar in the layout's dtype."""
        return torch.empty((), dtype=self.dtype).element_size()

    def slice(self, name: str) -> slice:
        """The slice of the flat vector that holds parameter ``name``."""
        i = self.index(name)
        return slice(self.offsets[i], self.offsets[i] + self.shapes[i].numel())

    def index(self, name: str) -> int:
        """Position of ``name`` in the layout."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not a trainable parameter of the model") from None

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate a ``name -> tensor`` mapping into the flat vector (differentiable).

        Raises:
            ValueError: when names are missing or unexpected, or a shape does not match.
        """
        if tensors.keys() != set(self.names):
            missing = [n for n in self.names if n not in tensors]
            extra = sorted(set(tensors) - set(self.names))
            raise ValueError(
                "expected one tensor per trainable parameter; "
                f"missing {missing}, unexpected {extra}"
            )
        parts = []
        for name, shape in zip(self.names, self.shapes, strict=True):
            t = tensors[name]
            if t.shape != shape:
                raise ValueError(f"{name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
            parts.append(t.reshape(-1))
        return torch.cat(parts)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector (or a batch ``[..., P]``) into ``name -> tensor`` views."""
        if flat.shape[-1] != self.numel:
            raise ValueError(
                f"expected a vector of length P = {self.numel}, got {tuple(flat.shape)}"
            )
        lead = flat.shape[:-1]
        return {
            n: flat[..., self.slice(n)].reshape(*lead, *s)
            for n, s in zip(self.names, self.shapes, strict=True)
        }

    def check_vector(self, v: torch.Tensor) -> torch.Tensor:
        """Validate a flat vector of length P and move it to the layout's dtype and device."""
        if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.shape[0] != self.numel:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"expected a flat tensor of shape [{self.numel}], got {shape}")
        return v.to(device=self.device, dtype=self.dtype)
