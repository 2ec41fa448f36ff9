"""MNIST-1D few-shot tasks (paper §6.2, App. D.2), generated offline and cached.

The data come from the ``mnist1d`` package's procedural generator
(``mnist1d.data.make_dataset``), never from a download: the standard arguments of
``get_dataset_args()`` with ``num_samples`` set to 12,000 (App. D.2: "12,000 examples of
40-dimensional vectors across 10 classes"). The package's own 80/20 split gives 9,600
meta-training examples and 2,400 held-out examples; meta-training tasks are drawn from the
first, evaluation tasks from the second (all 10 classes appear in both, so evaluation
measures generalisation to unseen *examples*, as in the paper's set-up).

The generated arrays are cached as ``.npz`` under ``$FOBBENCH_CACHE`` (else
``$XDG_CACHE_HOME/fobbench``, else ``~/.cache/fobbench``), keyed by a hash of the generator's
arguments and the package version, so a second run skips the ~2 s generation.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fobbench.errors import FobbenchError
from fobbench.models.conv1d import Conv1D
from fobbench.problems.base import TaskBatch
from fobbench.problems.cache import cache_root
from fobbench.results.schema import config_hash

DEFAULT_SAMPLES = 12_000
"""Total examples generated (App. D.2), split 80/20 by the package into 9,600 / 2,400."""

SPLITS = ("train", "eval")


def cache_dir() -> Path:
    """Where generated data sets are cached (see :func:`fobbench.problems.cache.cache_root`)."""
    return cache_root()


def dataset_args(num_samples: int = DEFAULT_SAMPLES, seed: int = 42) -> dict[str, object]:
    """The package's standard generator arguments with ``num_samples`` and ``seed`` replaced.

    The download ``url`` entry is dropped: nothing here ever downloads.
    """
    from mnist1d.data import get_dataset_args

    args = dict(get_dataset_args(as_dict=True))
    args.pop("url", None)
    args["num_samples"] = int(num_samples)
    args["seed"] = int(seed)
    return args


@contextmanager
def _preserved_global_rng() -> Iterator[None]:
    """Restore Python's and NumPy's global RNG state afterwards: ``make_dataset`` reseeds both."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mnist1d")
    except PackageNotFoundError:
        return "unknown"


def generate(args: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Run ``mnist1d.data.make_dataset`` offline on ``args``; the global RNG state is kept.

    Returns ``x`` (n_train, 40) float64, ``y`` (n_train,) int64, ``x_test``, ``y_test``, ``t``.
    """
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    with _preserved_global_rng():
        data = make_dataset(ObjectView(dict(args)))
    return {key: np.asarray(data[key]) for key in ("x", "y", "x_test", "y_test", "t")}


def cache_file(args: Mapping[str, object], directory: Path | None = None) -> Path:
    """The cache file of ``args``: ``mnist1d-<hash of args and package version>.npz``."""
    folder = cache_dir() if directory is None else Path(directory)
    key = config_hash({"generator": "mnist1d.data.make_dataset", "version": _version(), "args": dict(args)})
    return folder / f"mnist1d-{key}.npz"


def load(args: Mapping[str, object], directory: Path | None = None) -> tuple[dict[str, np.ndarray], Path]:
    """The data set for ``args``, from the cache or generated (then cached atomically).

    Returns the arrays and the cache file's path. The file name holds a hash of the
    arguments and the ``mnist1d`` version, so different arguments never collide.
    """
    path = cache_file(args, directory)
    folder = path.parent
    if path.is_file():
        try:
            with np.load(path) as stored:
                return {k: stored[k] for k in stored.files}, path
        except (OSError, ValueError):
            pass  # a corrupt cache entry is regenerated below
    data = generate(args)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **data)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs the generation time next run
    return data, path


class MNIST1DProblem:
    """N-way K-shot tasks on MNIST-1D (default 3-way 5-shot, 10 queries per class).

    Args:
        ways: N classes per task (default 3, App. D.2), at most 10.
        shots: K support examples per class (default 5).
        queries: query examples per class (default 10).
        num_samples: total examples generated (default 12,000; 80% meta-train, 20% held out).
        seed: the generator's seed (default 42, the package's standard).
        cache: cache folder (default :func:`cache_dir`).
        activation: the Conv1D's activation (default ``relu``, the paper's; ``tanh``,
            ``softplus``, ``gelu`` are smooth).
        pool: the Conv1D's pooling (default ``max``, the paper's; ``avg`` is smooth).
    """

    name = "mnist1d"

    def __init__(self, ways: int = 3, shots: int = 5, queries: int = 10,
                 num_samples: int = DEFAULT_SAMPLES, seed: int = 42, cache: Path | None = None,
                 activation: str = "relu", pool: str = "max") -> None:
        from fobbench.models.conv1d import ACTIVATIONS, POOLS

        if activation not in ACTIVATIONS:
            raise FobbenchError(f"--activation: unknown '{activation}' "
                                f"(choose from {', '.join(ACTIVATIONS)})")
        if pool not in POOLS:
            raise FobbenchError(f"--pool: unknown '{pool}' (choose from {', '.join(POOLS)})")
        self.activation, self.pool = activation, pool
        for option, value in (("--ways", ways), ("--shots", shots), ("--queries", queries)):
            if not isinstance(value, int) or value < 1:
                raise FobbenchError(f"{option} must be an integer >= 1 (got {value})")
        if ways < 2:
            raise FobbenchError(f"--ways must be at least 2 (got {ways})")
        if num_samples < 100:
            raise FobbenchError(f"--num-samples must be at least 100 (got {num_samples})")
        self.ways, self.shots, self.queries = ways, shots, queries
        self.args = dataset_args(num_samples, seed)
        data, self.cache_file = load(self.args, cache)
        self.classes = len(np.unique(data["y"]))
        if ways > self.classes:
            raise FobbenchError(f"--ways {ways} exceeds the {self.classes} MNIST-1D classes")
        self._x: dict[str, Tensor] = {}
        # Per split: a (classes, max members) table of example indices, padded with 0, and
        # the member count of each class.
        self._members: dict[str, tuple[Tensor, Tensor]] = {}
        arrays = {"train": (data["x"], data["y"]), "eval": (data["x_test"], data["y_test"])}
        for split, (xs, ys) in arrays.items():
            self._x[split] = torch.as_tensor(xs, dtype=torch.float32).unsqueeze(1)  # (n, 1, 40)
            labels = torch.as_tensor(ys, dtype=torch.long)
            by_class = [torch.nonzero(labels == c).flatten() for c in range(self.classes)]
            counts = torch.tensor([len(idx) for idx in by_class])
            members = torch.zeros(self.classes, int(counts.max()), dtype=torch.long)
            for c, idx in enumerate(by_class):
                members[c, : len(idx)] = idx
            self._members[split] = (members, counts)
            if shots + queries > int(counts.min()):
                raise FobbenchError(
                    f"--shots + --queries = {shots + queries} exceeds the {int(counts.min())} examples "
                    f"of the smallest class in the {split} split (raise --num-samples)"
                )
        self.length = int(self._x["train"].shape[-1])

    def sample(self, split: str, tasks: int, generator: torch.Generator) -> TaskBatch:
        """``tasks`` tasks from ``split`` (``train``: meta-training examples, ``eval``: held out).

        Each task draws ``ways`` distinct classes and, per class, ``shots + queries`` distinct
        examples without replacement (support and query are disjoint). Labels are 0..ways-1
        in the drawn class order; examples are ordered class by class.
        """
        if split not in SPLITS:
            raise FobbenchError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")
        per_class = self.shots + self.queries
        members, counts = self._members[split]
        # Uniform classes and examples without replacement, for all tasks at once: the
        # `ways` smallest of C uniform keys pick the classes, the `per_class` smallest keys
        # over a class's members (padding keys set to +inf) pick its examples.
        classes = torch.rand(tasks, self.classes, generator=generator).argsort(dim=1)[:, : self.ways]
        keys = torch.rand(tasks, self.ways, members.shape[1], generator=generator)
        width = torch.arange(members.shape[1]).view(1, 1, -1)
        keys = keys.masked_fill(width >= counts[classes].unsqueeze(-1), float("inf"))
        slots = keys.topk(per_class, dim=-1, largest=False).indices  # (tasks, ways, per_class)
        picks = members[classes.unsqueeze(-1), slots]
        x = self._x[split]
        labels = torch.arange(self.ways).view(1, self.ways, 1).expand(tasks, self.ways, per_class)
        support_idx = picks[:, :, : self.shots].reshape(tasks, -1)
        query_idx = picks[:, :, self.shots:].reshape(tasks, -1)
        support = (x[support_idx], labels[:, :, : self.shots].reshape(tasks, -1).clone())
        query = (x[query_idx], labels[:, :, self.shots:].reshape(tasks, -1).clone())
        return TaskBatch(support, query)

    def model(self) -> nn.Module:
        """A fresh Conv1D of App. D.2 with ``ways`` outputs (initialised from the global torch RNG)."""
        return Conv1D(ways=self.ways, length=self.length, activation=self.activation, pool=self.pool)

    def describe(self) -> dict[str, object]:
        """Settings that define the problem (generator arguments, split), for CSV rows and hashes."""
        n_train, n_eval = (int(self._members[s][1].sum()) for s in SPLITS)
        split = f"train={n_train} examples/eval={n_eval} held-out examples, {self.classes} classes in both"
        return {
            "problem": self.name,
            "split": split,
            "split_hash": config_hash({"split": split, "data_args": dict(self.args)}),
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "generator": "mnist1d.data.make_dataset",
            "mnist1d_version": _version(),
            "data_args": dict(self.args),
            # Only a non-default model is recorded, so the paper model's hashes are unchanged.
            **({"activation": self.activation} if self.activation != "relu" else {}),
            **({"pool": self.pool} if self.pool != "max" else {}),
        }
