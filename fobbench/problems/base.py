"""What a few-shot classification problem gives the training loop.

A problem samples batches of N-way K-shot tasks and builds its model. Task data carry a
leading task axis so a batch goes straight into :func:`fobbench.estimators.meta_gradient`.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import nn

from fobbench.params import Data


class TaskBatch(NamedTuple):
    """A batch of tasks.

    Attributes:
        support: ``(x, y)`` with shapes ``(tasks, ways*shots, ...)`` and ``(tasks, ways*shots)``.
        query: ``(x, y)`` with shapes ``(tasks, ways*queries, ...)`` and ``(tasks, ways*queries)``.
    """

    support: Data
    query: Data


class FewShotProblem(Protocol):
    """An N-way K-shot classification problem.

    Attributes:
        name: ``mnist1d`` or ``omniglot``.
        ways, shots, queries: N, K and query examples per class.
    """

    name: str
    ways: int
    shots: int
    queries: int

    def sample(self, split: str, tasks: int, generator: torch.Generator) -> TaskBatch:
        """``tasks`` tasks from ``split`` (``train`` or ``eval``), drawn with ``generator``.

        Labels within a task are 0..ways-1 in a random class order.
        """
        ...

    def model(self) -> nn.Module:
        """A freshly initialised model for this problem (uses the global torch RNG)."""
        ...

    def describe(self) -> dict[str, object]:
        """Settings that define the problem (data arguments, split, split hash...), for CSV
        rows and the config hash."""
        ...
