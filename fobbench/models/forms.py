"""Which form a layer takes while ``torch.compile`` traces a vmapped meta-gradient.

Some layers compile best in a different (equivalent) form under ``vmap`` than without it: the
Conv1D's max-pooling compiled into a scatter under ``vmap`` and into a good kernel without it
(:class:`fobbench.models.conv1d.PairMaxPool1d`). Dynamo traces the body of ``vmap`` with
unbatched tensors, so a layer cannot see the ``vmap`` itself; fobbench's compiled batching
says so instead, by tracing inside :func:`vmapped_compile`. Dynamo guards on the flag it read, so
a graph traced with it is not reused without it and vice versa.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_VMAPPED_COMPILE = False


@contextmanager
def vmapped_compile() -> Iterator[None]:
    """Calls of a compiled ``vmap`` (fobbench's ``compiled`` batching) run inside this."""
    global _VMAPPED_COMPILE
    previous, _VMAPPED_COMPILE = _VMAPPED_COMPILE, True
    try:
        yield
    finally:
        _VMAPPED_COMPILE = previous


def compiling_vmapped() -> bool:
    """True while ``torch.compile`` traces inside :func:`vmapped_compile`."""
    return torch.compiler.is_compiling() and _VMAPPED_COMPILE
