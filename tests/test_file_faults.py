"""File-system and data faults: one line naming the path and the cause, exit 2, no traceback."""

from __future__ import annotations

import errno
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fobbench.errors import FobbenchError
from fobbench.paths import check_writable_dir, check_writable_file
from fobbench.problems import omniglot_data as od

ROOT = Path(__file__).resolve().parents[1]
MEMORY = ("memory", "--arch", "transformer", "--d-model", "16", "--heads", "2", "--ffn", "32",
          "--batch", "2", "--inner-steps", "1", "--seq", "8", "--methods", "fomaml", "--quiet", "--no-plot")


def _one_line(error: pytest.ExceptionInfo[FobbenchError]) -> str:
    message = str(error.value)
    assert "\n" not in message and error.value.exit_code == 2
    return message


# --- the reusable checks ------------------------------------------------------------------


def test_a_file_where_a_folder_should_be(tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    with pytest.raises(FobbenchError) as error:
        check_writable_dir(blocker)
    assert _one_line(error) == f"--out: {blocker} is a file, not a folder"
    with pytest.raises(FobbenchError) as error:
        check_writable_dir(blocker / "memory" / "run", "--figures")
    assert _one_line(error) == (f"--figures: {blocker / 'memory' / 'run'} cannot be created: "
                                f"{blocker} is a file, not a folder")
    with pytest.raises(FobbenchError, match="is a folder, not a file"):
        check_writable_file(tmp_path)
    with pytest.raises(FobbenchError) as error:
        check_writable_file(blocker / "r.csv")
    assert _one_line(error) == (f"--out: {blocker / 'r.csv'} cannot be created: "
                                f"{blocker} is a file, not a folder")


def test_under_proc_nothing_can_be_created() -> None:
    with pytest.raises(FobbenchError) as error:
        check_writable_dir("/proc/fobbench/run")
    message = _one_line(error)
    assert message.startswith("--out: cannot write to /proc/fobbench/run (in /proc): ")


def test_a_read_only_file_system_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(FobbenchError) as error:
        check_writable_file(tmp_path / "new" / "r.csv")
    assert _one_line(error) == (f"--out: cannot write to {tmp_path / 'new'} (in {tmp_path}): "
                                "read-only file system")


def test_a_writable_folder_passes_and_nothing_is_left_behind(tmp_path: Path) -> None:
    assert check_writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert check_writable_file(tmp_path / "r.csv") == tmp_path / "r.csv"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["/proc/fobbench/mem.csv", "{file}/mem.csv"])
def test_memory_out_that_cannot_be_written_is_one_line_exit_2(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = where.format(file=blocker)
    done = subprocess.run([sys.executable, "-m", "fobbench", *MEMORY, "--out", out], check=False,
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and str(Path(out).parent) in done.stderr


# --- Omniglot data ------------------------------------------------------------------------


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((105, 105), 255, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_damaged_zip_entry_names_the_zip_and_the_entry(tmp_path: Path) -> None:
    first = od.character_table()[0]
    name = f"{first.half}/{first.alphabet}/{first.character}/0001_01.png"
    for half in od.SPLITS:
        with zipfile.ZipFile(tmp_path / f"{half}.zip", "w", zipfile.ZIP_STORED) as archive:
            if half == first.half:
                archive.writestr(name, _png())
    path = tmp_path / f"{first.half}.zip"
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")  # inside the stored PNG: the CRC-32 no longer matches
    data[start + 8] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FobbenchError) as error:
        od.decode(od.find_source(tmp_path, "zip"), char_ids=[1])
    message = _one_line(error)
    assert message.startswith(f"{path}: damaged entry {name} (") and "CRC" in message


@pytest.mark.parametrize("content", [b"garbage, not numpy at all", b"\x93NUMPY"])
def test_a_garbage_npz_is_not_an_omniglot_npz_and_pickles_are_never_suggested(tmp_path: Path,
                                                                               content: bytes) -> None:
    for half in od.SPLITS:
        (tmp_path / f"{half}.npz").write_bytes(content)
    with pytest.raises(FobbenchError) as error:
        od.decode(od.find_source(tmp_path, "npz"), char_ids=[1])
    message = _one_line(error)
    assert "not an Omniglot npz" in message and "pickle" not in message
    assert str(tmp_path / f"{od.SPLITS[0]}.npz") in message


def test_an_npz_without_images_says_what_it_holds(tmp_path: Path) -> None:
    for half in od.SPLITS:
        np.savez(tmp_path / f"{half}.npz", labels=np.zeros(3))
    with pytest.raises(FobbenchError, match="not an Omniglot npz .*; it holds labels"):
        od.decode(od.find_source(tmp_path, "npz"), char_ids=[1])


# --- every command checks its output before the expensive work ------------------------------


def test_train_fails_on_its_out_before_generating_data(cli, tmp_path: Path, monkeypatch) -> None:
    from fobbench.cli import train

    def no_data(p: object) -> None:
        raise AssertionError("the data were generated before --out was checked")

    monkeypatch.setattr(train, "mnist1d_problem", no_data)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli("train", "mnist1d", "--iterations", "1", "--quiet", "--out", str(blocker / "r.csv"))
    assert code == 2 and err.count("\n") == 1
    assert f"--out: {blocker / 'r.csv'} cannot be created: {blocker} is a file" in err


def test_plot_checks_its_out_before_reading(cli, tmp_path: Path, monkeypatch) -> None:
    from fobbench import plot  # the command imports collect from here once its options are checked

    monkeypatch.setattr(plot, "collect", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read first")))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli("plot", str(tmp_path), "--out", str(blocker / "figs"))
    assert code == 2 and err.count("\n") == 1 and f"--out: {blocker / 'figs'} cannot be created" in err


@pytest.mark.parametrize("option", ["--markdown", "--csv"])
def test_compare_checks_its_report_files_before_comparing(cli, tmp_path: Path, option: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    missing = tmp_path / "absent"  # were the results read first, this would be the error
    code, _, err = cli("compare", str(missing), str(missing), option, str(blocker / "report"))
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"fobbench: error: {option}: ")
