"""Omniglot N-way K-shot classification (paper §6.3, App. D.4) on the real data.

Images come from :mod:`fobbench.problems.omniglot_data` (decoded once, then cached), 28×28
by default, float32 in [0, 1] with ink = 1. Classes are characters, and with ``rotate=True``
(default) each character's rotations by 0°, 90°, 180° and 270° are four separate classes
(Santoro et al. 2016; Finn et al. 2017). All rotations of a character stay on the same side
of a split.

Splits (of the 1,623 characters, ids 1..1623 in canonical char_id order):

* ``maml`` (default): the protocol of Finn et al. (2017), whose baselines the paper's
  Table 2 quotes: 1,200 characters for meta-training and the other 423 for meta-testing,
  with rotations (4,800 / 1,692 classes). Finn et al. drew the 1,200 with Python's
  ``random.seed(1)`` shuffle of an ``os.listdir`` order, which cannot be reproduced; here the
  meta-training characters are the first 1,200 of ``numpy.random.default_rng(0).permutation(1623)``
  (0-based indices, char_id = index + 1) and the meta-test characters the remaining 423.
* ``lake``: the original halves, background (964 characters, 30 alphabets) for training and
  evaluation (659 characters, 20 alphabets) for testing (Lake et al. 2015).
* ``vinyals``: 1,028 train / 172 validation / 423 test characters (Vinyals et al. 2016), as
  published in the split files of Snell et al.'s prototypical-networks repository
  (``data/omniglot/splits/vinyals``): validation = the alphabets Armenian, Bengali,
  Early_Aramaic, Hebrew and Mkhedruli_(Georgian); test = Gurmukhi character42..45 and the
  alphabets Kannada, Keble, Malayalam, Manipuri, Mongolian, Old_Church_Slavonic_(Cyrillic),
  Oriya, Sylheti, Syriac_(Serto), Tengwar, Tibetan and ULOG; train = everything else. The
  validation list was read from that repository's ``val.txt``; the test list from two public
  copies of it (an alphabet list and a config naming the four Gurmukhi characters), not the
  original ``test.txt``, which was unavailable offline. The counts (172, 423, 1,028) match.

``sample("eval", ...)`` draws from the test characters of every split; ``sample("val", ...)``
exists for ``vinyals`` only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fobbench.errors import FobbenchError
from fobbench.models.conv4 import Conv4
from fobbench.problems import omniglot_data as od
from fobbench.problems.base import TaskBatch
from fobbench.progress import console, progress

SPLIT_NAMES = ("maml", "lake", "vinyals")
"""Accepted values of ``split``."""

ROTATIONS = (0, 90, 180, 270)
"""Rotations (degrees, counter-clockwise as ``torch.rot90``) that make new classes."""

MAML_TRAIN_CHARACTERS = 1200
"""Meta-training characters of the MAML protocol."""

MAML_PERMUTATION_SEED = 0
"""``numpy.random.default_rng(MAML_PERMUTATION_SEED).permutation(1623)`` fixes the MAML split."""

VINYALS_VAL_ALPHABETS = ("Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)")
VINYALS_TEST_ALPHABETS = (
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)",
    "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
)
VINYALS_TEST_EXTRA = tuple(("Gurmukhi", f"character{n}") for n in (42, 43, 44, 45))


def split_characters(split: str) -> dict[str, np.ndarray]:
    """The char_ids (1-based, sorted) of each part of a split: keys ``train``, ``eval``
    and, for ``vinyals``, ``val``.

    Raises:
        FobbenchError: unknown split name.
    """
    table = od.character_table()
    ids = np.arange(1, od.CHARACTERS + 1)
    if split == "maml":
        order = np.random.default_rng(MAML_PERMUTATION_SEED).permutation(od.CHARACTERS) + 1
        cut = MAML_TRAIN_CHARACTERS
        return {"train": np.sort(order[:cut]), "eval": np.sort(order[cut:])}
    if split == "lake":
        background = np.array([c.half == od.SPLITS[0] for c in table])
        return {"train": ids[background], "eval": ids[~background]}
    if split == "vinyals":
        val = np.array([c.alphabet in VINYALS_VAL_ALPHABETS for c in table])
        test = np.array([c.alphabet in VINYALS_TEST_ALPHABETS
                         or (c.alphabet, c.character) in VINYALS_TEST_EXTRA for c in table])
        return {"train": ids[~val & ~test], "val": ids[val], "eval": ids[test]}
    raise FobbenchError(f"unknown Omniglot split '{split}' (choose from {', '.join(SPLIT_NAMES)})")


def split_hash(parts: dict[str, np.ndarray], rotations: tuple[int, ...]) -> str:
    """A 16-hex-digit sha256 of the character lists and rotations that define a split."""
    text = json.dumps({"rotations": list(rotations), **{k: v.tolist() for k, v in sorted(parts.items())}})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class OmniglotProblem:
    """N-way K-shot Omniglot tasks (implements :class:`fobbench.problems.base.FewShotProblem`).

    A task draws ``ways`` classes (character, rotation) without replacement from one side of
    the split, then ``shots + queries`` of the 20 drawers of each class without replacement.
    Support and query are class-major (``y = [0]*shots + [1]*shots + ...``); the class order
    is random, so label ``c`` is a random class.

    Args:
        data_dir: folder holding Omniglot (default ``$FOBBENCH_DATA``, else
            ``~/.cache/fobbench/omniglot``); see :mod:`fobbench.problems.omniglot_data`.
        ways: N, classes per task (default 5).
        shots: K, support images per class (default 1).
        queries: query images per class (default 15, App. D.4); shots + queries <= 20.
        split: ``maml`` (default), ``lake`` or ``vinyals`` (module docstring).
        image_size: side of the images in pixels (default 28, at most 105).
        rotate: rotations as extra classes (default True).
        resize: ``lanczos`` (default) or ``nearest``.
        source: ``auto`` (default), ``zip``, ``folder`` or ``npz``.
        cache_dir: folder for the decoded array (default ``~/.cache/fobbench/omniglot-cache``).
        quiet: no progress bar or status line while decoding (default False).

    Raises:
        FobbenchError: bad settings, or the data are missing or incomplete.
    """

    name = "omniglot"

    def __init__(self, data_dir: Path | None = None, ways: int = 5, shots: int = 1, queries: int = 15,
                 split: str = "maml", image_size: int = 28, *, rotate: bool = True, resize: str = "lanczos",
                 source: str = "auto", cache_dir: Path | None = None, quiet: bool = False,
                 activation: str = "relu", pool: str = "max", hidden: int = 64) -> None:
        self.activation, self.pool, self.hidden = activation, pool, hidden
        for label, value, low in (("ways", ways, 2), ("shots", shots, 1), ("queries", queries, 1),
                                  ("image size", image_size, 4)):
            if not isinstance(value, int) or value < low:
                raise FobbenchError(f"Omniglot {label} must be an integer >= {low} (got {value})")
        if shots + queries > od.DRAWERS:
            raise FobbenchError(
                f"Omniglot has {od.DRAWERS} drawings per character: shots + queries must be <= "
                f"{od.DRAWERS} (got {shots} + {queries})"
            )
        if image_size > od.ORIGINAL_SIZE:
            raise FobbenchError(f"Omniglot image size must be <= {od.ORIGINAL_SIZE} (got {image_size})")
        if resize not in od.RESIZE_METHODS:
            raise FobbenchError(
                f"unknown resize method '{resize}' (choose from {', '.join(od.RESIZE_METHODS)})"
            )
        self.ways, self.shots, self.queries = ways, shots, queries
        self.split, self.image_size, self.resize = split, image_size, resize
        self.rotations = ROTATIONS if rotate else (0,)
        self.parts = split_characters(split)
        for part, chars in self.parts.items():
            if chars.size * len(self.rotations) < ways:
                raise FobbenchError(f"Omniglot {split}/{part} has {chars.size * len(self.rotations)} "
                                    f"classes, fewer than ways={ways}")
        self.split_hash = split_hash(self.parts, self.rotations)

        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else od.default_data_dir()
        self.loaded = self._load(source, cache_dir, quiet)
        self.ink = torch.from_numpy(self.loaded.ink)
        self._turn = rotation_index(image_size)
        self.data_hash = hashlib.sha256(self.loaded.ink.tobytes()).hexdigest()[:16]

    def _load(self, source: str, cache_dir: Path | None, quiet: bool) -> od.Loaded:
        with progress(quiet) as bar:
            task = bar.add_task("decoding Omniglot", total=od.CHARACTERS * od.DRAWERS)
            loaded = od.load(self.data_dir, self.image_size, self.resize, source, cache_dir,
                             tick=lambda n: bar.advance(task, n))
        if not loaded.from_cache and not quiet:
            where = (f"cached in {loaded.cache_file}" if loaded.cache_file
                     else "cache folder not writable, not cached")
            console.print(f"decoded Omniglot ({loaded.source.kind}) in {loaded.seconds:.1f} s; {where}",
                          soft_wrap=True)
        return loaded

    def classes(self, split: str) -> int:
        """Number of classes (character × rotation) on one side of the split."""
        return int(self._chars(split).size * len(self.rotations))

    def _chars(self, split: str) -> np.ndarray:
        if split == "test":
            split = "eval"
        if split not in self.parts:
            raise FobbenchError(
                f"Omniglot split '{self.split}' has no '{split}' part (choose from {', '.join(self.parts)})"
            )
        return self.parts[split]

    def sample(self, split: str, tasks: int, generator: torch.Generator) -> TaskBatch:
        """``tasks`` tasks from ``split`` (``train``, ``eval`` (= ``test``), or ``val`` for
        ``vinyals``), drawn with ``generator``.

        Returns support x ``(tasks, ways*shots, 1, s, s)`` float32 in [0, 1] (ink = 1) and
        y ``(tasks, ways*shots)`` int64 in 0..ways-1; query likewise with ``ways*queries``.
        """
        chars = torch.from_numpy(self._chars(split) - 1)
        n_rot = len(self.rotations)
        n_classes = chars.numel() * n_rot
        # top-k of i.i.d. uniforms = a uniform subset without replacement, in random order
        picks = torch.rand(tasks, n_classes, generator=generator).topk(self.ways, dim=1).indices
        char_rows, rot_k = chars[picks // n_rot], picks % n_rot          # (tasks, ways)
        per_class = self.shots + self.queries
        noise = torch.rand(tasks, self.ways, od.DRAWERS, generator=generator)
        drawers = noise.topk(per_class, dim=2).indices                      # (tasks, ways, n)
        flat = self.ink.flatten(-2)[char_rows[..., None], drawers]       # (tasks, ways, n, s*s) uint8
        turn = self._turn[rot_k][:, :, None, :].expand_as(flat)         # k quarter turns per class
        images = flat.gather(-1, turn).view(tasks, self.ways, per_class, self.image_size, self.image_size)
        x = images.to(torch.float32).div_(255.0).unsqueeze(3)         # (tasks, ways, n, 1, s, s)
        labels = torch.arange(self.ways).view(1, self.ways, 1).expand(tasks, self.ways, per_class)

        def part(lo: int, hi: int) -> tuple[Tensor, Tensor]:
            xs = x[:, :, lo:hi].reshape(tasks, self.ways * (hi - lo), 1, self.image_size, self.image_size)
            return xs.contiguous(), labels[:, :, lo:hi].reshape(tasks, -1).contiguous()

        return TaskBatch(support=part(0, self.shots), query=part(self.shots, per_class))

    def model(self) -> nn.Module:
        """A fresh Conv4 (App. D.4) with ``ways`` outputs, for 1×s×s inputs."""
        return Conv4(ways=self.ways, in_channels=1, image_size=self.image_size, hidden=self.hidden,
                     activation=self.activation, pool=self.pool)

    def describe(self) -> dict[str, object]:
        """Settings that define the problem (go into CSV rows and the config hash)."""
        return {
            "dataset": "omniglot",
            "ways": self.ways, "shots": self.shots, "queries": self.queries,
            "split": self.split, "split_hash": self.split_hash,
            "rotations": ",".join(str(r) for r in self.rotations),
            "image_size": self.image_size, "resize": od.RESIZE_METHODS[self.resize],
            "data_hash": self.data_hash,
            **{f"{part}_characters": int(chars.size) for part, chars in self.parts.items()},
            **{f"{part}_classes": self.classes(part) for part in self.parts},
            # Only a non-default model is recorded, so the paper model's hashes are unchanged.
            **({"activation": self.activation} if self.activation != "relu" else {}),
            **({"pool": self.pool} if self.pool != "max" else {}),
            **({"hidden": self.hidden} if self.hidden != 64 else {}),
        }


def rotation_index(size: int) -> Tensor:
    """``(4, size*size)`` gather indices: ``flat[index[k]]`` is ``torch.rot90(image, k)`` flattened."""
    grid = torch.arange(size * size).view(size, size)
    return torch.stack([torch.rot90(grid, k, dims=(0, 1)).flatten() for k in range(4)])
