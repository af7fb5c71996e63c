"""The README's library example is a complete loop that runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_code(heading: str) -> str:
    text = README.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, f"no python block under '## {heading}'"
    return blocks[0]


def test_library_loop_runs_and_consolidates_two_tasks():
    code = _section_code("EWC in your own training loop")
    assert len(code.strip().splitlines()) <= 20
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    ewc, model = namespace["ewc"], namespace["model"]
    assert len(ewc) == 2 and ewc.nbytes > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert float(ewc.loss(model).detach()) > 0  # the weights left the first task's anchor
