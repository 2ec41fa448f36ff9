"""Suites: parsing, expansion into points, sharding, and errors that name file, line and key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import pytest
import typer
import typer.main

from fobbench import suites

ROOT = Path(__file__).resolve().parent.parent


def fake_root():
    """A small command tree with the option shapes real commands have."""
    app = typer.Typer()

    @app.command()
    def alpha(
        out: Annotated[Path | None, typer.Option("--out")] = None,
        resume: Annotated[Path | None, typer.Option("--resume")] = None,
        size: Annotated[int, typer.Option("--size")] = 1,
        methods: Annotated[str, typer.Option("--methods")] = "maml",
        inner_lr: Annotated[float, typer.Option("--inner-lr")] = 0.1,
        flag: Annotated[bool, typer.Option("--flag/--no-flag")] = False,
        quiet: Annotated[bool, typer.Option("--quiet")] = False,
    ) -> None:
        pass

    @app.command()
    def train(
        problem: Annotated[str, typer.Argument()],
        out: Annotated[Path | None, typer.Option("--out")] = None,
        steps: Annotated[int, typer.Option("--steps")] = 10,
    ) -> None:
        pass

    return typer.main.get_command(app)


GOOD = """\
description = "test suite"

[[run]]
name = "a-sweep"
command = "alpha"
[run.options]
methods = ["maml", "fobmaml-sym"]
inner_lr = 0.05
flag = true
[run.sweep]
option = "size"
values = [1, 2, 4, 8, 16]

[[run]]
name = "b-range"
command = "alpha"
options = { flag = false }
sweep = { option = "size", values = "32..256" }

[[run]]
name = "c-train"
command = "train mnist1d"
options.steps = 3
"""


def write(tmp_path: Path, text: str, name: str = "suite.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_expand_points_and_argv(tmp_path: Path) -> None:
    suite = suites.load(write(tmp_path, GOOD))
    points = suites.expand(suite)
    assert [p.index for p in points] == list(range(5 + 4 + 1))
    assert [p.label for p in points[:5]] == ["size-1", "size-2", "size-4", "size-8", "size-16"]
    assert [p.label for p in points[5:9]] == ["size-32", "size-64", "size-128", "size-256"]
    assert points[9].label == "all" and points[9].run == "c-train"
    args = suites.validate(suite, fake_root(), points, tmp_path / "out")
    first = args[0]
    assert first[0] == "alpha"
    assert first[first.index("--methods") + 1] == "maml,fobmaml-sym"
    assert first[first.index("--inner-lr") + 1] == "0.05"
    assert "--flag" in first and "--quiet" in first
    assert first[first.index("--size") + 1] == "1"
    assert first[first.index("--out") + 1] == str(tmp_path / "out" / "a-sweep" / "size-1.csv")
    assert "--no-flag" in args[5]
    assert args[9][:2] == ["train", "mnist1d"] and args[9][args[9].index("--steps") + 1] == "3"
    assert "--quiet" not in args[9]  # train has no --quiet


@pytest.mark.parametrize("count", [2, 3, 4])
def test_shards_cover_every_point_exactly_once(tmp_path: Path, count: int) -> None:
    points = suites.expand(suites.load(write(tmp_path, GOOD)))
    seen = [p.index for i in range(1, count + 1) for p in suites.shard(points, i, count)]
    assert sorted(seen) == [p.index for p in points]  # no loss and no overlap
    sizes = [len(suites.shard(points, i, count)) for i in range(1, count + 1)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "a/b", "1"])
def test_bad_shard_is_refused(text: str) -> None:
    with pytest.raises(suites.FobbenchError, match="--shard"):
        suites.parse_shard(text)


def line_of(text: str, fragment: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if fragment in line)


BAD_CASES = {
    "unknown option in sub-table": (GOOD.replace("inner_lr = 0.05", "inner_lrr = 0.05"),
                                    "inner_lrr = 0.05", "options.inner_lrr", "unknown option"),
    "unknown option inline": (GOOD.replace("{ flag = false }", "{ flag = false, sizes = 3 }"),
                              "sizes = 3", "options.sizes", "unknown option"),
    "unknown option dotted": (GOOD.replace("options.steps = 3", "options.stepz = 3"),
                              "options.stepz", "options.stepz", "unknown option"),
    "unknown command": (GOOD.replace('command = "train mnist1d"', 'command = "trian mnist1d"'),
                        'command = "trian', "command", "unknown command"),
    "value of the wrong type": (GOOD.replace("options.steps = 3", 'options.steps = "three"'),
                                "options.steps", "options.steps", "three"),
    "bad sweep value type": (GOOD.replace("values = [1, 2, 4, 8, 16]", 'values = [1, "two"]'),
                             "values = [1, \"two\"]", "sweep.values", "two"),
    "flag given a number": (GOOD.replace("flag = true", "flag = 3"), "flag = 3", "options.flag", "flag"),
    "unknown run key": (GOOD.replace('name = "b-range"', 'name = "b-range"\ncomand = "x"'),
                        "comand", "comand", "unknown key"),
    "duplicate name": (GOOD.replace('name = "c-train"', 'name = "a-sweep"'),
                       'name = "a-sweep"', "name", "duplicate"),
    "reserved option": (GOOD.replace("inner_lr = 0.05", 'out = "x.csv"'), 'out = "x.csv"', "options.out",
                        "set by fobbench run"),
    "swept and fixed": (GOOD.replace("inner_lr = 0.05", "size = 3"), "size = 3", "options.size",
                        "both an option and the swept"),
    "bad range": (GOOD.replace('"32..256"', '"256..32"'), '"256..32"', "sweep.values", ""),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_suite_error_names_file_line_and_key(tmp_path: Path, case: str) -> None:
    text, fragment, key, needle = BAD_CASES[case]
    path = write(tmp_path, text)
    if case == "duplicate name":  # the second of the two equal names
        expected_line = [i for i, line in enumerate(text.splitlines(), 1) if fragment in line][1]
    else:
        expected_line = line_of(text, fragment)
    with pytest.raises(suites.SuiteError) as caught:
        suite = suites.load(path)
        points = suites.expand(suite)
        suites.validate(suite, fake_root(), points, tmp_path / "out")
    message = str(caught.value)
    assert message.startswith(f"{path}:{expected_line}:"), message
    assert f"key '{key}'" in message and needle in message
    assert "\n" not in message


def test_toml_syntax_error_names_line_column_and_key(tmp_path: Path) -> None:
    text = GOOD.replace("inner_lr = 0.05", "inner_lr = 0.05.1")
    path = write(tmp_path, text)
    with pytest.raises(suites.SuiteError) as caught:
        suites.load(path)
    message = str(caught.value)
    assert re.match(rf"{re.escape(str(path))}:{line_of(text, '0.05.1')}:\d+: TOML syntax error", message)
    assert "inner_lr" in message


def test_cli_bad_suite_is_one_line_exit_2(tmp_path: Path, cli) -> None:
    text = 'description = "x"\n\n[[run]]\nname = "a"\ncommand = "nosuchcommand"\n'
    path = write(tmp_path, text)
    code, _, err = cli("run", str(path), "--dry-run")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"{path}:5:" in lines[0] and "command" in lines[0]
    code, _, err = cli("run", str(tmp_path / "absent.toml"))
    assert code == 2 and "no such suite file" in err


@pytest.mark.parametrize("name", ["ci.toml", "paper.toml"])
def test_shipped_suites_shard_exactly(name: str, cli) -> None:
    """--shard 1/2 and 2/2 of the shipped suites list exactly the full suite's points."""
    path = ROOT / "suites" / name

    def listed(*extra: str) -> list[str]:
        code, out, err = cli("run", str(path), "--dry-run", "--out", "/tmp/fobbench-shards", *extra)
        assert code == 0, err
        return [line for line in out.splitlines() if line.startswith("#")]

    full = listed()
    one, two = listed("--shard", "1/2"), listed("--shard", "2/2")
    assert full and one and two
    assert not set(one) & set(two)
    assert sorted(one + two) == sorted(full)
    indices = [int(line.split()[0][1:]) for line in full]
    assert indices == list(range(len(full)))


FAILING = """\
description = "one point fails when it starts (its data are missing), the other runs"

[[run]]
name = "bad-train"
command = "train omniglot"
options = { data_dir = "/nonexistent/omniglot", iterations = 1 }

[[run]]
name = "lam"
command = "gradcheck"
options = { experiments = "lambda", lam_grid = "0.5,2", dim = 4, tasks = 2 }
"""


def test_a_failing_point_is_reported_and_the_rest_still_runs(tmp_path: Path, cli) -> None:
    path = write(tmp_path, FAILING)
    out = tmp_path / "out"
    code, stdout, err = cli("run", str(path), "--out", str(out))
    assert code == 1, err
    assert (out / "lam" / "all" / "lambda.csv").is_file()
    assert not (out / "bad-train" / "all.csv").exists()
    log = (out / "bad-train" / "all.log").read_text()
    assert "/nonexistent/omniglot" in log and "exit 2" in log
    assert "1 ok, 1 failed" in stdout
    # a second run into the same folder is refused up front, unless resumed
    code, _, err = cli("run", str(path), "--out", str(out))
    assert code == 2 and "already exists" in err and "--resume" in err
    code, _, _ = cli("run", str(path), "--out", str(out), "--resume")
    assert code == 1  # the bad point is still bad; the finished one resumes with nothing to do


BAD_VALUE_LATER = """\
description = "the second run has a bad range: nothing may run"

[[run]]
name = "lam"
command = "gradcheck"
options = { experiments = "lambda", lam_grid = "0.5,2", dim = 4, tasks = 2 }

[[run]]
name = "mem"
command = "memory"
[run.options]
arch = "transformer"
d_model = 16
seq = "32,"
"""


@pytest.mark.parametrize(("bad", "key", "needle"), [
    ('seq = "32,"', "options.seq", "--seq"),
    ('seq = "512..32"', "options.seq", "--seq"),
    ('lam = -1.0', "options.lam", "--lam"),
    ('methods = ["maml", "exact"]', "options.methods", "gradcheck-only"),
])
def test_every_value_of_every_run_is_checked_before_the_first_run(tmp_path: Path, cli, bad: str, key: str,
                                                                  needle: str) -> None:
    path = write(tmp_path, BAD_VALUE_LATER.replace('seq = "32,"', bad))
    out = tmp_path / "out"
    code, _, err = cli("run", str(path), "--out", str(out))
    lines = err.strip().splitlines()
    line = 1 + path.read_text().splitlines().index(bad)
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"fobbench: error: {path}:{line}: [[run]] #2 'mem' key '{key}': ")
    assert needle in lines[0]
    assert not out.exists()  # the first run did not start
    code, _, err = cli("run", str(path), "--dry-run")
    assert code == 2 and f"{path}:{line}:" in err
