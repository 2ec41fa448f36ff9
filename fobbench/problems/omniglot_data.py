"""Reading, decoding and caching the real Omniglot images (Lake et al., Science 2015).

Omniglot has 1,623 handwritten characters from 50 alphabets, each drawn once by 20
people, as 105×105 1-bit PNGs. This module finds the data in a user-given folder, decodes
it once into one array of small images and caches that array, so later runs start in
well under a second.

Accepted layouts of a data folder (the first one found wins, in this order):

* ``images_background.zip`` + ``images_evaluation.zip`` (github.com/brendenlake/omniglot,
  ``python/``); PNGs are read straight from the zips, nothing is extracted;
* the unzipped folders ``images_background/<Alphabet>/characterNN/XXXX_YY.png`` and
  ``images_evaluation/...``;
* either of the two above inside ``omniglot-py/`` (where torchvision's ``Omniglot`` puts them);
* ``images_background.npz`` + ``images_evaluation.npz`` (keys ``images`` bool
  ``(characters, 20, 105, 105)`` with True = white background, and ``labels``), one row per
  character in char_id order.

Canonical order: every source is put in **char_id order**, the 4-digit prefix ``XXXX`` of
the original file names (1..1623), drawer ``YY`` (1..20) on the second axis. char_id order
is background before evaluation and consecutive within an alphabet in characterNN order;
the alphabets themselves are in Lake's order (Arcadian, Armenian, ...), not sorted by name.
This is the order of ``characters.csv`` and of the npz rows, and the only one an npz-only
user can recover, so zip, folders and npz give identical arrays.

Decoding: each PNG is opened with PIL, converted to 8-bit grey (mode ``L``) and resized with
``Image.LANCZOS`` (antialiased). Converting first matters: PIL silently resizes mode ``1``
(1-bit) images with NEAREST whatever filter is asked for, which is what
``im.resize((28, 28), LANCZOS)`` on the raw PNG (the MAML preprocessing script) really does.
``resize="nearest"`` reproduces that binary variant. Images are stored as uint8 *ink*
(255 = ink, 0 = background), the inverse of the files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fobbench.errors import FobbenchError
from fobbench.problems.cache import cache_root

CHARACTERS = 1623
"""Characters in the full set (background 964 + evaluation 659)."""

DRAWERS = 20
"""Drawings (people) per character."""

ORIGINAL_SIZE = 105
"""Side of the original images (pixels)."""

SPLITS = ("images_background", "images_evaluation")
"""The two halves of the original release, in canonical order."""

ALPHABETS: tuple[tuple[str, str, int], ...] = (
    # (release half, alphabet, characters), in char_id order; char_ids are consecutive per
    # alphabet and characterNN = 1.. within it (from characters.csv, checked against the
    # zips and folders whenever those are read).
    ("images_background", "Arcadian", 26),
    ("images_background", "Armenian", 41),
    ("images_background", "Asomtavruli_(Georgian)", 40),
    ("images_background", "Balinese", 24),
    ("images_background", "Bengali", 46),
    ("images_background", "Blackfoot_(Canadian_Aboriginal_Syllabics)", 14),
    ("images_background", "Braille", 26),
    ("images_background", "Cyrillic", 33),
    ("images_background", "Early_Aramaic", 22),
    ("images_background", "Syriac_(Estrangelo)", 23),
    ("images_background", "Anglo-Saxon_Futhorc", 29),
    ("images_background", "Futurama", 26),
    ("images_background", "Grantha", 43),
    ("images_background", "Greek", 24),
    ("images_background", "Gujarati", 48),
    ("images_background", "Hebrew", 22),
    ("images_background", "Japanese_(hiragana)", 52),
    ("images_background", "Inuktitut_(Canadian_Aboriginal_Syllabics)", 16),
    ("images_background", "Malay_(Jawi_-_Arabic)", 40),
    ("images_background", "Japanese_(katakana)", 47),
    ("images_background", "Korean", 40),
    ("images_background", "Latin", 26),
    ("images_background", "Alphabet_of_the_Magi", 20),
    ("images_background", "Mkhedruli_(Georgian)", 41),
    ("images_background", "Burmese_(Myanmar)", 34),
    ("images_background", "N_Ko", 33),
    ("images_background", "Ojibwe_(Canadian_Aboriginal_Syllabics)", 14),
    ("images_background", "Sanskrit", 42),
    ("images_background", "Tagalog", 17),
    ("images_background", "Tifinagh", 55),
    ("images_evaluation", "Angelic", 20),
    ("images_evaluation", "Atemayar_Qelisayer", 26),
    ("images_evaluation", "Atlantean", 26),
    ("images_evaluation", "Aurek-Besh", 26),
    ("images_evaluation", "Avesta", 26),
    ("images_evaluation", "Ge_ez", 26),
    ("images_evaluation", "Glagolitic", 45),
    ("images_evaluation", "Gurmukhi", 45),
    ("images_evaluation", "Kannada", 41),
    ("images_evaluation", "Keble", 26),
    ("images_evaluation", "Malayalam", 47),
    ("images_evaluation", "Manipuri", 40),
    ("images_evaluation", "Mongolian", 30),
    ("images_evaluation", "Old_Church_Slavonic_(Cyrillic)", 45),
    ("images_evaluation", "Oriya", 46),
    ("images_evaluation", "Syriac_(Serto)", 23),
    ("images_evaluation", "Sylheti", 28),
    ("images_evaluation", "Tengwar", 25),
    ("images_evaluation", "Tibetan", 42),
    ("images_evaluation", "ULOG", 26),
)

RESIZE_METHODS = {
    "lanczos": "PIL LANCZOS on 8-bit grey (antialiased)",
    "nearest": "PIL NEAREST (binary; what LANCZOS on the 1-bit PNG silently does)",
}
"""Resize methods by name, with the description recorded in results."""

CACHE_FORMAT = 1
"""Bumped whenever the cached array's meaning changes, so old caches are not reused."""

_PNG_NAME = re.compile(
    r"(?:^|/)(images_background|images_evaluation)/([^/]+)/(character\d\d)/(\d{4})_(\d\d)\.png$"
)


@dataclass(frozen=True)
class CharacterInfo:
    """Where a character sits in the release.

    Attributes:
        char_id: the 4-digit file prefix, 1..1623 (index ``char_id - 1`` in every array).
        half: ``images_background`` or ``images_evaluation``.
        alphabet: alphabet folder name.
        character: ``characterNN`` folder name.
    """

    char_id: int
    half: str
    alphabet: str
    character: str


def character_table() -> list[CharacterInfo]:
    """All 1,623 characters in canonical (char_id) order."""
    table: list[CharacterInfo] = []
    for half, alphabet, count in ALPHABETS:
        for n in range(1, count + 1):
            table.append(CharacterInfo(len(table) + 1, half, alphabet, f"character{n:02d}"))
    return table


@dataclass(frozen=True)
class Source:
    """A located copy of Omniglot.

    Attributes:
        kind: ``zip``, ``folder`` or ``npz``.
        paths: the two files or folders (background, evaluation).
    """

    kind: str
    paths: tuple[Path, Path]

    def fingerprint(self) -> str:
        """A short hash of where the data lie and when they changed (keys the cache)."""
        parts = []
        for path in self.paths:
            stat = path.stat()
            parts.append(f"{path.resolve()}|{stat.st_size if path.is_file() else 0}|{stat.st_mtime_ns}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]

    def describe(self) -> str:
        """``kind: path, path`` for messages."""
        return f"{self.kind}: {self.paths[0]}, {self.paths[1]}"


def default_cache_root() -> Path:
    """The cache root (see :func:`fobbench.problems.cache.cache_root`)."""
    return cache_root()


def default_data_dir() -> Path:
    """The data folder when none is given: ``$FOBBENCH_DATA`` else ``~/.cache/fobbench/omniglot``."""
    env = os.environ.get("FOBBENCH_DATA")
    return Path(env).expanduser() if env else default_cache_root() / "omniglot"


def expected_files_message(data_dir: Path) -> str:
    """The one-line error for a folder without Omniglot, naming every accepted layout."""
    return (
        f"Omniglot data not found in {data_dir}: expected images_background.zip and "
        "images_evaluation.zip (github.com/brendenlake/omniglot, python/), or their unzipped "
        "folders images_background/ and images_evaluation/ (also under omniglot-py/ as "
        "torchvision saves them), or images_background.npz and images_evaluation.npz; "
        "pass --data-dir or set FOBBENCH_DATA"
    )


def find_source(data_dir: Path, kind: str = "auto") -> Source:
    """Locate Omniglot in ``data_dir``.

    Args:
        data_dir: the folder to search (and its ``omniglot-py/`` subfolder).
        kind: ``auto`` (default: zip, then folders, then npz), or one of ``zip``, ``folder``, ``npz``.

    Raises:
        FobbenchError: nothing usable was found (the message lists the expected files), one
            half of a pair is missing, or ``kind`` is unknown.
    """
    kinds = ("zip", "folder", "npz")
    if kind != "auto" and kind not in kinds:
        raise FobbenchError(f"unknown Omniglot source '{kind}' (choose from auto, {', '.join(kinds)})")
    wanted = kinds if kind == "auto" else (kind,)
    if not data_dir.is_dir():
        raise FobbenchError(expected_files_message(data_dir))
    checks: dict[str, tuple[str, Callable[[Path], bool]]] = {
        "zip": (".zip", Path.is_file), "folder": ("", Path.is_dir), "npz": (".npz", Path.is_file),
    }
    for root in (data_dir, data_dir / "omniglot-py"):
        for k in wanted:
            if k == "npz" and root != data_dir:
                continue
            suffix, exists = checks[k]
            pair = (root / f"{SPLITS[0]}{suffix}", root / f"{SPLITS[1]}{suffix}")
            present = [exists(p) for p in pair]
            if all(present):
                return Source(k, pair)
            if any(present):
                missing = pair[present.index(False)]
                found = pair[present.index(True)]
                raise FobbenchError(f"Omniglot data incomplete: found {found} but not {missing}")
    raise FobbenchError(expected_files_message(data_dir))


def _ink(white: np.ndarray, size: int, resize: str) -> np.ndarray:
    """One image: bool/uint8 array with white background -> uint8 ink (255 = ink), size×size."""
    grey = Image.fromarray(np.where(white.astype(bool), 255, 0).astype(np.uint8), mode="L")
    if size != grey.width:
        if resize == "lanczos":
            grey = grey.resize((size, size), Image.Resampling.LANCZOS)
        else:
            grey = grey.resize((size, size), Image.Resampling.NEAREST)
    return 255 - np.asarray(grey, dtype=np.uint8)


def decode_png(data: bytes, size: int, resize: str = "lanczos") -> np.ndarray:
    """A PNG file's bytes -> uint8 ink image (size×size, 255 = ink), as the cache stores it."""
    with Image.open(io.BytesIO(data)) as image:
        return _ink(np.asarray(image.convert("L")) > 127, size, resize)


def _read_entry(archive: zipfile.ZipFile, name: str, path: Path) -> bytes:
    """One member's bytes; a damaged member (bad CRC, bad deflate data) is a one-line error."""
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise FobbenchError(
            f"{path}: damaged entry {name} ({error}); download the zip again"
        ) from None


def _png_entries(source: Source) -> Iterator[tuple[re.Match[str], Callable[[], bytes]]]:
    """(name match, reader) for every PNG of a zip or folder source, in any order."""
    for path in source.paths:
        if source.kind == "zip":
            try:
                archive = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as error:
                raise FobbenchError(f"cannot read Omniglot zip {path}: {error}") from None
            with archive:
                for name in archive.namelist():
                    match = _PNG_NAME.search(name)
                    if match:
                        yield match, (lambda n=name, a=archive, p=path: _read_entry(a, n, p))
        else:
            for file in sorted(path.glob("*/character*/*.png")):
                match = _PNG_NAME.search(file.as_posix())
                if match:
                    yield match, file.read_bytes


def _decode_pngs(source: Source, size: int, resize: str, wanted: set[int] | None,
                 images: np.ndarray, seen: np.ndarray, tick: Callable[[int], None]) -> None:
    table = character_table()
    for match, read in _png_entries(source):
        half, alphabet, character, char_id, drawer = match.groups()
        cid, d = int(char_id), int(drawer) - 1
        if not (1 <= cid <= CHARACTERS and 0 <= d < DRAWERS):
            raise FobbenchError(f"unexpected Omniglot file {match.group(0)} in {source.describe()}")
        info = table[cid - 1]
        if (info.half, info.alphabet, info.character) != (half, alphabet, character):
            raise FobbenchError(
                f"Omniglot file {match.group(0)} has char_id {cid}, which the canonical release "
                f"places at {info.half}/{info.alphabet}/{info.character}: not the standard data set"
            )
        if wanted is not None and cid not in wanted:
            continue
        data = read()
        try:
            images[cid - 1, d] = decode_png(data, size, resize)
        except (OSError, ValueError, SyntaxError) as error:  # PIL: UnidentifiedImageError, truncated
            raise FobbenchError(
                f"{source.describe()}: {match.group(0)} is not a readable PNG ({error})"
            ) from None
        seen[cid - 1, d] = True
        tick(1)


def _npz_images(path: Path) -> np.ndarray:
    """The ``images`` array of an Omniglot npz; anything else is "not an Omniglot npz".

    Never loads pickles (``np.load``'s default ``allow_pickle=False``), and never suggests it:
    numpy's own message for a non-npz file does, and that would run code from the file.
    """
    what = "not an Omniglot npz (expected a NumPy .npz archive with an 'images' array)"
    try:
        loaded = np.load(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        cause = "" if "pickle" in str(error) else f": {error}"
        raise FobbenchError(f"{path}: {what}{cause}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise FobbenchError(f"{path}: {what}; it holds a single .npy array")
    with loaded as npz:
        if "images" not in npz.files:
            raise FobbenchError(f"{path}: {what}; it holds {', '.join(npz.files) or 'nothing'}")
        try:
            return npz["images"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            cause = "" if "pickle" in str(error) else f" ({error})"
            raise FobbenchError(f"{path}: damaged 'images' array{cause}; download the npz again") from None


def _decode_npz(source: Source, size: int, resize: str, wanted: set[int] | None,
                images: np.ndarray, seen: np.ndarray, tick: Callable[[int], None]) -> None:
    offset = 0
    for path, half in zip(source.paths, SPLITS, strict=True):
        expected = sum(count for h, _, count in ALPHABETS if h == half)
        white = _npz_images(path)
        if white.shape != (expected, DRAWERS, ORIGINAL_SIZE, ORIGINAL_SIZE):
            raise FobbenchError(
                f"{path} holds images of shape {white.shape}, expected "
                f"({expected}, {DRAWERS}, {ORIGINAL_SIZE}, {ORIGINAL_SIZE})"
            )
        for row in range(expected):
            cid = offset + row + 1
            if wanted is not None and cid not in wanted:
                continue
            for d in range(DRAWERS):
                images[cid - 1, d] = _ink(white[row, d], size, resize)
                seen[cid - 1, d] = True
            tick(DRAWERS)
        offset += expected


def decode(source: Source, size: int = 28, resize: str = "lanczos", char_ids: list[int] | None = None,
           tick: Callable[[int], None] = lambda n: None) -> np.ndarray:
    """Decode a source into uint8 ink images ``(1623, 20, size, size)`` in canonical order.

    Args:
        source: from :func:`find_source`.
        size: side of the output images (pixels, default 28).
        resize: a key of :data:`RESIZE_METHODS` (default ``lanczos``).
        char_ids: decode only these characters (1-based; the other rows stay zero) and skip
            the completeness check; None (default) decodes and checks all 32,460 images.
        tick: called with the number of images decoded so far in each step (progress bars).

    Raises:
        FobbenchError: unreadable files, or images missing from the set.
    """
    if resize not in RESIZE_METHODS:
        raise FobbenchError(f"unknown resize method '{resize}' (choose from {', '.join(RESIZE_METHODS)})")
    images = np.zeros((CHARACTERS, DRAWERS, size, size), dtype=np.uint8)
    seen = np.zeros((CHARACTERS, DRAWERS), dtype=bool)
    wanted = None if char_ids is None else set(char_ids)
    reader = _decode_npz if source.kind == "npz" else _decode_pngs
    reader(source, size, resize, wanted, images, seen, tick)
    rows = np.arange(CHARACTERS) if wanted is None else np.array(sorted(wanted)) - 1
    missing = int((~seen[rows]).sum())
    if missing:
        first = int(rows[np.nonzero(~seen[rows].all(axis=1))[0][0]]) + 1
        raise FobbenchError(
            f"Omniglot in {source.describe()} is incomplete: {missing} of {rows.size * DRAWERS} "
            f"images missing (first: char_id {first}); expected {CHARACTERS} characters × {DRAWERS} drawers"
        )
    return images


@dataclass(frozen=True)
class Loaded:
    """Decoded images and how they were obtained.

    Attributes:
        ink: uint8 ``(1623, 20, size, size)``, 255 = ink, canonical order.
        source: where they came from.
        cache_file: the cache file read or written (None when caching failed).
        from_cache: whether the images came from the cache.
        seconds: wall time of the load (decode + cache write, or cache read).
    """

    ink: np.ndarray
    source: Source
    cache_file: Path | None
    from_cache: bool
    seconds: float


def cache_path(cache_dir: Path, source: Source, size: int, resize: str) -> Path:
    """The cache file for a source, image size and resize method."""
    return cache_dir / f"omniglot-{source.kind}-{source.fingerprint()}-{size}px-{resize}-v{CACHE_FORMAT}.npz"


def _read_cache(path: Path, size: int, resize: str) -> np.ndarray | None:
    try:
        with np.load(path) as npz:
            ink = npz["ink"]
            meta = json.loads(str(npz["meta"]))
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    ok = (ink.shape == (CHARACTERS, DRAWERS, size, size) and ink.dtype == np.uint8
          and meta.get("format") == CACHE_FORMAT and meta.get("resize") == resize)
    return ink if ok else None


def _write_cache(path: Path, ink: np.ndarray, source: Source, size: int, resize: str) -> bool:
    meta = {"format": CACHE_FORMAT, "size": size, "resize": resize, "source": source.describe()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, ink=ink, meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)
        return True
    except OSError:
        return False


def load(data_dir: Path, size: int = 28, resize: str = "lanczos", source_kind: str = "auto",
         cache_dir: Path | None = None, tick: Callable[[int], None] = lambda n: None) -> Loaded:
    """Find, decode (first time) or read from cache (later) the Omniglot images.

    Args:
        data_dir: where the data lie (see the module docstring for layouts).
        size: output side in pixels (default 28).
        resize: ``lanczos`` (default) or ``nearest``.
        source_kind: ``auto`` (default) or ``zip``/``folder``/``npz``.
        cache_dir: where decoded arrays are cached (default ``~/.cache/fobbench/omniglot-cache``);
            one uncompressed .npz per source, size and resize method (25 MiB at 28 px). A cache
            folder that cannot be written is not an error: the data are then decoded every run.
        tick: progress callback, see :func:`decode`.
    """
    start = time.perf_counter()
    source = find_source(data_dir, source_kind)
    cache_dir = cache_dir if cache_dir is not None else default_cache_root() / "omniglot-cache"
    path = cache_path(cache_dir, source, size, resize)
    ink = _read_cache(path, size, resize) if path.exists() else None
    if ink is not None:
        return Loaded(ink, source, path, True, time.perf_counter() - start)
    ink = decode(source, size, resize, tick=tick)
    written = _write_cache(path, ink, source, size, resize)
    return Loaded(ink, source, path if written else None, False, time.perf_counter() - start)
