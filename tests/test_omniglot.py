"""Omniglot on the real data: reading, canonical order, cache, splits, tasks, Conv4.

The data are looked up in ``../shared/data/omniglot`` next to the repository (override with
FOBBENCH_TEST_OMNIGLOT); tests that need them are skipped with the reason when absent. The
full set is decoded once per module (from the npz pair, ~5 s) into a temporary cache; the
zip and folder readers are checked against it on samples of characters.
"""

from __future__ import annotations

import csv
import io
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fobbench.errors import FobbenchError
from fobbench.estimators import EstimatorConfig, meta_gradient
from fobbench.inner import InnerConfig
from fobbench.models.conv4 import Conv4
from fobbench.params import classification_loss, relative_error
from fobbench.problems import omniglot_data as od
from fobbench.problems.omniglot import OmniglotProblem, split_characters

DATA = Path(os.environ.get("FOBBENCH_TEST_OMNIGLOT")
            or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot")
HAVE_DATA = all((DATA / f"{half}.{ext}").is_file() for half in od.SPLITS for ext in ("zip", "npz"))
needs_data = pytest.mark.skipif(
    not HAVE_DATA, reason=f"real Omniglot (images_*.zip and images_*.npz) not found in {DATA}; "
                          "set FOBBENCH_TEST_OMNIGLOT to its folder")
SAMPLE = sorted(np.random.default_rng(1).choice(np.arange(1, od.CHARACTERS + 1), 40, replace=False).tolist())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.fixture(scope="module")
def problem(cache_dir: Path) -> OmniglotProblem:
    """The full set decoded from the npz pair into the module's cache (timed)."""
    if not HAVE_DATA:
        pytest.skip(f"real Omniglot not found in {DATA}")
    start = time.perf_counter()
    made = OmniglotProblem(DATA, source="npz", cache_dir=cache_dir, quiet=True)
    print(f"\nfull decode from npz: {time.perf_counter() - start:.1f} s")
    assert not made.loaded.from_cache
    return made


def csv_rows() -> list[dict[str, str]]:
    with open(DATA / "characters.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def independent_decode(archive: zipfile.ZipFile, row: dict[str, str], drawer: int,
                       size: int = 28) -> np.ndarray:
    """Decode one PNG by its path from characters.csv, straight with PIL (ink = 255)."""
    half = "images_background" if row["split"] == "background" else "images_evaluation"
    name = f"{half}/{row['alphabet']}/{row['character']}/{int(row['char_id']):04d}_{drawer + 1:02d}.png"
    grey = Image.open(io.BytesIO(archive.read(name))).convert("L")
    return 255 - np.asarray(grey.resize((size, size), Image.Resampling.LANCZOS))


# --- data: counts, order, decode, cache ---------------------------------------------------

@needs_data
def test_counts_and_every_image_has_ink(problem: OmniglotProblem) -> None:
    ink = problem.loaded.ink
    assert ink.shape == (1623, 20, 28, 28) and ink.dtype == np.uint8
    assert (ink.reshape(1623 * 20, -1).max(axis=1) > 0).all()      # no blank image
    assert (ink.reshape(1623 * 20, -1).mean(axis=1) < 128).all()   # ink is the minority (inverted)
    halves = [c.half for c in od.character_table()]
    assert halves.count("images_background") == 964 and halves.count("images_evaluation") == 659
    assert len({c.alphabet for c in od.character_table()}) == 50


@needs_data
def test_character_table_is_characters_csv() -> None:
    rows = csv_rows()
    table = od.character_table()
    assert len(rows) == len(table) == 1623
    for row, info in zip(rows, table, strict=True):
        assert int(row["char_id"]) == info.char_id
        assert (row["alphabet"], row["character"]) == (info.alphabet, info.character)
        assert info.half == f"images_{row['split']}"


@needs_data
def test_zip_layout_is_the_canonical_one() -> None:
    """Every PNG path in the zips agrees with the char_id table: 1,623 × 20 files."""
    table = od.character_table()
    found: dict[int, set[int]] = {}
    for half in od.SPLITS:
        with zipfile.ZipFile(DATA / f"{half}.zip") as archive:
            for name in archive.namelist():
                if not name.endswith(".png"):
                    continue
                top, alphabet, character, file = name.split("/")
                cid, drawer = int(file[:4]), int(file[5:7])
                info = table[cid - 1]
                assert (info.half, info.alphabet, info.character) == (top, alphabet, character)
                found.setdefault(cid, set()).add(drawer)
    assert sorted(found) == list(range(1, 1624))
    assert all(drawers == set(range(1, 21)) for drawers in found.values())


@needs_data
def test_cached_array_equals_pngs_decoded_from_the_zip(problem: OmniglotProblem) -> None:
    rows = csv_rows()
    archives = {half: zipfile.ZipFile(DATA / f"{half}.zip") for half in od.SPLITS}
    for cid in SAMPLE:
        row = rows[cid - 1]
        archive = archives[f"images_{row['split']}"]
        for drawer in (0, 7, 19):
            expected = independent_decode(archive, row, drawer)
            np.testing.assert_array_equal(problem.loaded.ink[cid - 1, drawer], expected)


@needs_data
def test_zip_source_equals_npz_source(problem: OmniglotProblem) -> None:
    zipped = od.decode(od.find_source(DATA, "zip"), 28, "lanczos", char_ids=SAMPLE)
    rows = np.array(SAMPLE) - 1
    np.testing.assert_array_equal(zipped[rows], problem.loaded.ink[rows])
    others = np.setdiff1d(np.arange(1623), rows)
    assert zipped[others].max() == 0          # only the sample was decoded


@needs_data
def test_folder_layouts_including_torchvision(problem: OmniglotProblem, tmp_path: Path) -> None:
    """Unzipped folders under omniglot-py/ (torchvision) read the same as the npz."""
    root = tmp_path / "omniglot-py"
    keep = {"images_background/Tagalog/", "images_evaluation/ULOG/"}
    for half in od.SPLITS:
        with zipfile.ZipFile(DATA / f"{half}.zip") as archive:
            archive.extractall(root, [n for n in archive.namelist() if any(n.startswith(k) for k in keep)])
    source = od.find_source(tmp_path)
    assert source.kind == "folder" and source.paths[0] == root / "images_background"
    ids = [c.char_id for c in od.character_table() if c.alphabet in ("Tagalog", "ULOG")]
    folder = od.decode(source, 28, "lanczos", char_ids=ids)
    np.testing.assert_array_equal(folder[np.array(ids) - 1], problem.loaded.ink[np.array(ids) - 1])
    with pytest.raises(FobbenchError, match=r"incomplete: .* images missing"):
        od.decode(source, 28, "lanczos")


@needs_data
def test_second_load_comes_from_the_cache_fast(problem: OmniglotProblem, cache_dir: Path) -> None:
    start = time.perf_counter()
    again = OmniglotProblem(DATA, source="npz", cache_dir=cache_dir, quiet=True)
    seconds = time.perf_counter() - start
    print(f"\ncached load: {seconds:.3f} s (first decode {problem.loaded.seconds:.1f} s)")
    assert again.loaded.from_cache and again.loaded.cache_file is not None
    assert seconds < 5.0
    np.testing.assert_array_equal(again.loaded.ink, problem.loaded.ink)
    assert again.describe() == problem.describe()


@needs_data
def test_nearest_is_what_lanczos_on_the_1bit_png_does() -> None:
    """PIL resizes mode-1 images with NEAREST whatever filter is asked: resize='nearest'
    reproduces the MAML script's images, and they are binary, unlike ours."""
    ids = SAMPLE[:4]
    nearest = od.decode(od.find_source(DATA, "npz"), 28, "nearest", char_ids=ids)
    rows = csv_rows()
    with (zipfile.ZipFile(DATA / "images_background.zip") as bg,
          zipfile.ZipFile(DATA / "images_evaluation.zip") as ev):
        for cid in ids:
            row = rows[cid - 1]
            archive = bg if row["split"] == "background" else ev
            name = f"images_{row['split']}/{row['alphabet']}/{row['character']}/{cid:04d}_01.png"
            raw = Image.open(io.BytesIO(archive.read(name)))
            assert raw.mode == "1"
            maml_script = np.asarray(raw.resize((28, 28), Image.Resampling.LANCZOS))   # bool
            np.testing.assert_array_equal(nearest[cid - 1, 0], np.where(maml_script, 0, 255))
    assert set(np.unique(nearest[np.array(ids) - 1])) <= {0, 255}


def test_missing_data_names_the_expected_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FobbenchError) as error:
        OmniglotProblem(tmp_path, cache_dir=tmp_path / "cache")
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message
    for expected in ("images_background.zip", "images_evaluation.zip", "images_background.npz",
                     "images_evaluation.npz", "omniglot-py", "FOBBENCH_DATA"):
        assert expected in message
    monkeypatch.setenv("FOBBENCH_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(FobbenchError, match="elsewhere"):
        OmniglotProblem(cache_dir=tmp_path / "cache")
    (tmp_path / "images_background.zip").write_bytes(b"")
    with pytest.raises(FobbenchError, match="incomplete: found .*background.zip but not .*evaluation.zip"):
        od.find_source(tmp_path)


# --- splits -------------------------------------------------------------------------------

@pytest.mark.parametrize(("split", "sizes"), [
    ("maml", {"train": 1200, "eval": 423}),
    ("lake", {"train": 964, "eval": 659}),
    ("vinyals", {"train": 1028, "val": 172, "eval": 423}),
])
def test_split_sizes_and_disjointness(split: str, sizes: dict[str, int]) -> None:
    parts = split_characters(split)
    assert {k: v.size for k, v in parts.items()} == sizes
    union = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(union), np.arange(1, 1624))          # a partition: disjoint and complete


def test_split_definitions() -> None:
    maml = split_characters("maml")
    order = np.random.default_rng(0).permutation(1623) + 1
    assert np.array_equal(maml["train"], np.sort(order[:1200]))
    table = od.character_table()
    lake = split_characters("lake")
    assert {table[i - 1].half for i in lake["train"]} == {"images_background"}
    vinyals = split_characters("vinyals")
    assert {table[i - 1].alphabet for i in vinyals["val"]} == {
        "Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"}
    gurmukhi = [table[i - 1].character for i in vinyals["eval"] if table[i - 1].alphabet == "Gurmukhi"]
    assert gurmukhi == ["character42", "character43", "character44", "character45"]
    with pytest.raises(FobbenchError, match="unknown Omniglot split 'finn'"):
        split_characters("finn")


@needs_data
def test_split_hash_and_describe(problem: OmniglotProblem, cache_dir: Path) -> None:
    info = problem.describe()
    assert info["split"] == "maml" and info["train_classes"] == 4800 and info["eval_classes"] == 1692
    assert info["image_size"] == 28 and "LANCZOS" in str(info["resize"])
    hashes = {OmniglotProblem(DATA, split=s, source="npz", cache_dir=cache_dir, quiet=True).split_hash
              for s in ("maml", "lake", "vinyals")}
    no_rot = OmniglotProblem(DATA, source="npz", cache_dir=cache_dir, quiet=True, rotate=False)
    assert len(hashes | {no_rot.split_hash}) == 4 and no_rot.classes("train") == 1200
    same = OmniglotProblem(DATA, source="npz", cache_dir=cache_dir, quiet=True)
    assert problem.split_hash == same.split_hash


# --- tasks --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rotation_index(problem: OmniglotProblem) -> dict[bytes, set[tuple[int, int, int]]]:
    """Every rotated image of the set, by its bytes -> {(char_id, quarter turns k, drawer)}."""
    index: dict[bytes, set[tuple[int, int, int]]] = {}
    for k in range(4):
        turned = torch.rot90(problem.ink, k, dims=(-2, -1)).contiguous().numpy()
        for c in range(turned.shape[0]):
            for d in range(turned.shape[1]):
                index.setdefault(turned[c, d].tobytes(), set()).add((c + 1, k, d))
    return index


@needs_data
def test_task_shapes_labels_and_range(problem: OmniglotProblem) -> None:
    batch = problem.sample("train", 3, torch.Generator().manual_seed(0))
    (xs, ys), (xq, yq) = batch.support, batch.query
    assert xs.shape == (3, 5, 1, 28, 28) and xq.shape == (3, 75, 1, 28, 28)
    assert xs.dtype == torch.float32 and ys.dtype == torch.int64
    assert ys.shape == (3, 5) and yq.shape == (3, 75)
    assert float(xq.min()) >= 0.0 and float(xq.max()) <= 1.0 and float(xq.mean()) < 0.3   # ink = 1, sparse
    assert all(torch.bincount(y, minlength=5).tolist() == [15] * 5 for y in yq)
    again = problem.sample("train", 3, torch.Generator().manual_seed(0))
    assert torch.equal(again.query[0], xq)
    other = problem.sample("train", 3, torch.Generator().manual_seed(1))
    assert not torch.equal(other.query[0], xq)


@needs_data
def test_tasks_use_rotated_classes_from_the_right_side(
        problem: OmniglotProblem, rotation_index: dict[bytes, set[tuple[int, int, int]]]) -> None:
    """Each class of a task is one (character, rotation) of the sampled side; support and query
    of a class are different drawings; rotations really occur."""
    assert problem.loaded.cache_file is not None
    shots_problem = OmniglotProblem(DATA, shots=2, queries=3, source="npz",
                                    cache_dir=problem.loaded.cache_file.parent, quiet=True)
    rotations_seen = set()
    for split in ("train", "eval"):
        chars = set(shots_problem.parts[split].tolist())
        batch = shots_problem.sample(split, 6, torch.Generator().manual_seed(3))
        for t in range(6):
            images = torch.cat([batch.support[0][t], batch.query[0][t]]).squeeze(1)
            labels = torch.cat([batch.support[1][t], batch.query[1][t]])
            classes = []
            for c in range(5):
                keys = [(img * 255).round().to(torch.uint8).numpy().tobytes() for img in images[labels == c]]
                found = [{hit for hit in rotation_index.get(key, set()) if hit[0] in chars} for key in keys]
                assert all(found), f"a {split} image is not a rotation of a {split} character"
                common = set.intersection(*[{(cid, k) for cid, k, _ in f} for f in found])
                assert common, "images of one label come from different classes"
                drawers = [{d for _, _, d in f} for f in found]
                assert len(set.union(*drawers)) >= 5     # 5 different drawings of the class
                classes.append(common)
                rotations_seen |= {k for _, k in common}
            assert all(not (classes[a] & classes[b]) for a in range(5) for b in range(a + 1, 5))
    assert rotations_seen == {0, 1, 2, 3}


@needs_data
def test_bad_settings_are_one_line_errors(problem: OmniglotProblem, cache_dir: Path) -> None:
    with pytest.raises(FobbenchError, match="shots \\+ queries must be <= 20"):
        OmniglotProblem(DATA, shots=5, queries=16, cache_dir=cache_dir)
    with pytest.raises(FobbenchError, match="no 'val' part"):
        problem.sample("val", 1, torch.Generator())
    with pytest.raises(FobbenchError, match="unknown resize"):
        OmniglotProblem(DATA, resize="bicubic", cache_dir=cache_dir)


# --- model ----------------------------------------------------------------------------------

def test_conv4_architecture() -> None:
    model = Conv4(ways=5)
    assert model(torch.zeros(7, 1, 28, 28)).shape == (7, 5)
    assert sum(p.numel() for p in model.parameters()) == 112_261
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 4 and not any(m.track_running_stats for m in norms)
    assert model.head.in_features == 64
    with pytest.raises(FobbenchError, match="too small"):
        Conv4(image_size=8)


@needs_data
def test_fobmaml_sym_meta_gradient_on_omniglot_tasks(problem: OmniglotProblem, cache_dir: Path) -> None:
    """One FO-B-MAML-sym meta-gradient on a 2-task batch: finite, nonzero, and vmap == loop."""
    small = OmniglotProblem(DATA, queries=1, source="npz", cache_dir=cache_dir, quiet=True)
    batch = small.sample("train", 2, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = small.model()
    theta = dict(model.named_parameters())
    config = EstimatorConfig(inner=InnerConfig(steps=1, lr=0.1, lam=2.0), nu=0.1)
    loss = classification_loss(model)
    vmapped = meta_gradient("fobmaml-sym", theta, loss, batch.support, batch.query, config, batching="vmap")
    looped = meta_gradient("fobmaml-sym", theta, loss, batch.support, batch.query, config, batching="loop")
    assert all(torch.isfinite(g).all() for g in vmapped.grad.values())
    assert float(sum(g.abs().sum() for g in vmapped.grad.values())) > 0
    assert relative_error(vmapped.grad, looped.grad) < 1e-4
