"""The words options choose from, importable without torch, pandas or matplotlib.

The command line checks every option value before it imports a heavy module
(:mod:`fobbench.cli.checks`), so the vocabularies it checks against live here. The modules
that act on a value keep the same tuple (their own constant, or an import of this one);
``tests/test_cli_checks.py`` asserts that each pair is equal, so the two never drift.
"""

from __future__ import annotations

from fobbench.errors import FobbenchError

INNER_OPTIMIZERS = ("gd", "momentum", "adam")
"""Inner solvers (``--inner-optimizer``; :data:`fobbench.inner.OPTIMIZERS`)."""

OUTER_OPTIMIZERS = ("sgd", "clipped", "sngdm", "adam")
"""Outer optimizers (``--outer``; :data:`fobbench.meta_optim.OUTER`)."""

FIGURE_FORMATS = ("png", "svg", "pdf")
"""Figure formats (``--format``; :data:`fobbench.figures.common.FORMATS`)."""

MEMORY_ARCHS = ("convnet", "transformer", "plugin")
"""``memory --arch`` (:data:`fobbench.experiments.memory.ARCHS`)."""

MEMORY_BACKENDS = ("cpu", "cuda", "estimate")
"""How ``memory`` measures (:data:`fobbench.measure.memory.BACKENDS`)."""

SDPA_MODES = ("default", "math")
"""``memory --sdpa`` (:data:`fobbench.models.transformer.SDPA_MODES`)."""

SPEED_BATCHINGS = ("vmap", "loop", "compiled")
"""``speed --batching`` (:data:`fobbench.experiments.speed.BATCHINGS`)."""

PEERS = ("higher", "torchopt", "learn2learn")
"""``speed --peers`` (the keys of :data:`fobbench.peers.PEERS`)."""

GRADCHECK_EXPERIMENTS = ("error_vs_k", "outer_loss", "error_vs_nu", "lambda", "rates")
"""``gradcheck --experiments`` (:data:`fobbench.experiments.gradcheck.config.EXPERIMENTS`)."""

GRADCHECK_DTYPES = ("float64", "float32")
"""``gradcheck --dtype`` (the keys of :data:`fobbench.experiments.gradcheck.config.DTYPES`)."""

DEFAULT_GRADCHECK_EXPERIMENTS = ("error_vs_k",)
"""``gradcheck``'s default experiments (:data:`fobbench.experiments.gradcheck.config.DEFAULT_EXPERIMENTS`)."""

OMNIGLOT_SPLITS = ("maml", "lake", "vinyals")
"""``train omniglot --split`` (:data:`fobbench.problems.omniglot.SPLIT_NAMES`)."""

DEVICES = ("cpu", "cuda")
"""``--device`` of train, speed and memory."""

DIST_BACKENDS = ("gloo", "nccl")
"""``train --dist-backend`` (:data:`fobbench.distributed.BACKENDS`)."""

COMPARE_KINDS = ("all", "deterministic", "noisy")
"""``compare --kind`` (the keys of ``fobbench.cli.compare._KINDS``)."""


def parse_gradcheck_experiments(text: str) -> tuple[str, ...]:
    """``gradcheck --experiments``: ``all`` or a comma-separated subset of
    :data:`GRADCHECK_EXPERIMENTS`, in the order given without repeats (one-line error otherwise)."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if names == ["all"]:
        return GRADCHECK_EXPERIMENTS
    if not names:
        raise FobbenchError("--experiments: no experiment given")
    for name in names:
        if name not in GRADCHECK_EXPERIMENTS:
            raise FobbenchError(f"--experiments: unknown experiment '{name}' "
                                f"(choose from all, {', '.join(GRADCHECK_EXPERIMENTS)})")
    return tuple(dict.fromkeys(names))
