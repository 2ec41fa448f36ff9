"""One vocabulary: the same option names in every command; old spellings are hidden aliases."""

from __future__ import annotations

from pathlib import Path

import pytest

from fobbench.cli.options import ALIASES
from fobbench.results import read_results

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("command", [["gradcheck"], ["memory"], ["train", "mnist1d"], ["train", "omniglot"]])
def test_every_command_uses_the_one_name_per_concept(cli, command: list[str]) -> None:
    code, stdout, _ = cli(*command, "--help")
    assert code == 0
    for new in ("--inner-steps", "--inner-lr", "--meta-lr", "--seeds"):
        assert new in stdout, (command, new)
    for old in ("--k ", "--lr ", "--outer-lr", "--seed "):
        assert old not in stdout, (command, old)  # aliases stay out of the help


def test_old_spellings_still_work_with_one_deprecation_note(cli, tmp_path: Path) -> None:
    new_out, old_out = tmp_path / "new", tmp_path / "old"
    common = ("--dim", "4", "--tasks", "2", "--quiet", "--no-plot", "--methods", "fomaml,fobmaml-sym")
    code, _, stderr = cli("gradcheck", *common, "--inner-steps", "1,3", "--inner-lr", "0.01", "--seeds", "1",
                          "--out", str(new_out))
    assert code == 0 and stderr == ""
    code, _, stderr = cli("gradcheck", *common, "--k", "1,3", "--lr", "0.01", "--seed", "1", "--out",
                          str(old_out))
    assert code == 0, stderr
    notes = stderr.strip().splitlines()
    assert notes == [f"fobbench: note: {old} is deprecated and will be removed; use {ALIASES[old]}"
                     for old in ("--k", "--lr", "--seed")]
    new, old = read_results(new_out / "error_vs_k.csv"), read_results(old_out / "error_vs_k.csv")
    new, old = new[new["metric"] == "rel_error"], old[old["metric"] == "rel_error"]
    assert len(new) == 4 and new["value"].tolist() == old["value"].tolist()
    assert new["config_hash"].tolist() == old["config_hash"].tolist()
    assert "inner_steps" in new.columns and "k" not in new.columns
