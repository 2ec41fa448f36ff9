"""The README's Python API example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def _api_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    text = README.read_text()
    section = text[text.index("## Python API"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the Python API section has no python example"
    return blocks[0]


def test_python_api_example_runs_and_sets_every_gradient() -> None:
    torch.manual_seed(0)
    namespace: dict[str, object] = {}
    exec(compile(_api_example(), str(README), "exec"), namespace)  # noqa: S102 (our own README)
    model = namespace["model"]
    grads = [p.grad for p in model.parameters()]  # type: ignore[attr-defined]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)
    assert namespace["result"].tasks == 16  # type: ignore[attr-defined]
