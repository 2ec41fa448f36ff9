"""Suites: TOML files that name a set of runs, expanded into points and split into shards.

A suite file::

    description = "what this suite is for"

    [[run]]
    name = "memory-seq"             # output folder: <out>/memory-seq/
    command = "memory"              # any fobbench command, with positional words: "train mnist1d"
    [run.options]                   # its options, without the leading dashes
    arch = "transformer"
    methods = ["maml", "fobmaml-sym"]   # a list is passed comma-separated
    [run.sweep]                     # optional: one invocation (point) per value
    option = "seq"
    values = [32, 64, 128]          # or a range string such as "32..512"

Each point runs ``fobbench <command> <options> --out <out>/<name>/<label>.csv`` (or the folder
``<out>/<name>/<label>/`` for a command whose ``--out`` is a folder) where the label is ``all``
(no sweep) or ``<option>-<value>``; ``--quiet`` and ``--no-plot`` are added where the command
has them. Points are numbered across the whole suite in
file order; ``--shard I/N`` keeps the points whose index ``% N == I - 1``, so N array jobs
writing into one folder together produce exactly the suite's points.

Errors name the file, the line and the key: TOML syntax errors with tomllib's line and column,
semantic ones (unknown command, unknown option, a value the command refuses) by finding the
key's line in the text. Validation against the commands' options is done by :func:`validate`,
which takes the CLI's command tree so this module does not import the CLI.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from fobbench.errors import FobbenchError
from fobbench.ranges import parse_range

RUN_KEYS = ("name", "command", "description", "options", "sweep")
SWEEP_KEYS = ("option", "values")
TOP_KEYS = ("description", "run")
RESERVED_OPTIONS = ("out", "resume", "quiet", "no_plot", "no-plot")
"""Options ``fobbench run`` sets itself for every point."""

AUTOMATIC_FLAGS = ("--quiet", "--no-plot")
"""Flags added to every point whose command has them: one progress display for the suite,
and figures drawn once over the whole output folder by ``fobbench plot``."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HEADER = re.compile(r"^\s*\[")
_RUN_HEADER = re.compile(r"^\s*\[\[\s*run\s*\]\]")


class SuiteError(FobbenchError):
    """A bad suite file: the message names the file, the line and the key."""


@dataclass(frozen=True)
class RunSpec:
    """One ``[[run]]`` table of a suite.

    Attributes:
        index: position of the table in the file (0-based).
        name: output folder name, unique in the suite.
        command: the command words, e.g. ``("train", "mnist1d")``.
        options: option name -> TOML value, in file order.
        sweep_option: the swept option, or None.
        sweep_values: the swept values (empty without a sweep).
    """

    index: int
    name: str
    command: tuple[str, ...]
    options: Mapping[str, Any]
    sweep_option: str | None = None
    sweep_values: tuple[Any, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class Point:
    """One invocation of one command: the unit that shards split.

    Attributes:
        index: position in the whole suite (0-based), the basis of sharding.
        run: the run's name (its output folder).
        label: ``all`` or ``<option>-<value>``; the output file is ``<label>.csv``.
        command: command words.
        options: option name -> value for this point (sweep value included).
    """

    index: int
    run: str
    label: str
    command: tuple[str, ...]
    options: tuple[tuple[str, Any], ...]

    def output(self, root: Path, folder: bool = False) -> Path:
        """Where this point's results go below the suite's output folder.

        ``<root>/<run>/<label>.csv`` for commands whose ``--out`` is a CSV file, and the folder
        ``<root>/<run>/<label>/`` for commands whose ``--out`` is a folder (gradcheck writes
        one CSV per sub-experiment).
        """
        return Path(root) / self.run / (self.label if folder else f"{self.label}.csv")


@dataclass
class Suite:
    """A parsed suite file (structure checked, commands not yet)."""

    path: Path
    text: str
    description: str
    runs: list[RunSpec] = field(default_factory=list)

    def error(self, message: str, run: int | None = None, key: Sequence[str] = ()) -> SuiteError:
        """A SuiteError at the line of ``key`` (inside ``[[run]]`` number ``run`` when given)."""
        line = locate(self.text, run, tuple(key))
        where = f"{self.path}:{line}" if line else str(self.path)
        name = ""
        if run is not None:
            spec = next((r for r in self.runs if r.index == run), None)
            name = f"[[run]] #{run + 1}" + (f" '{spec.name}'" if spec else "")
        dotted = ".".join(key)
        target = " ".join(p for p in (name, f"key '{dotted}'" if dotted else "") if p)
        return SuiteError(f"{where}: {target + ': ' if target else ''}{message}")


def _key_pattern(key: str) -> str:
    return rf"""(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')"""


def locate(text: str, run: int | None, key: tuple[str, ...]) -> int:
    """The 1-based line of ``key`` in the suite text (0 when it cannot be found).

    ``run`` selects the ``[[run]]`` block (None: the top level before any table); ``key`` is
    ``()`` for the block's header, ``("command",)`` for a run key, ``("options", "seq")`` for
    a key of a sub-table (``[run.options]``, an inline table, or a dotted key).
    """
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines) if _RUN_HEADER.match(line)]
    if run is None:
        start, stop = 0, next((i for i, line in enumerate(lines) if _HEADER.match(line)), len(lines))
    else:
        if run >= len(headers):
            return 0
        start = headers[run]
        stop = headers[run + 1] if run + 1 < len(headers) else len(lines)
    block = range(start, stop)
    if not key:
        return start + 1 if run is not None else 0

    def first(pattern: str, rows: range) -> int | None:
        regex = re.compile(pattern)
        return next((i for i in rows if regex.search(lines[i])), None)

    # the run's own keys come before its first sub-table header
    own_end = next((i for i in block if i > start and _HEADER.match(lines[i])), stop)
    own = range(start + (1 if run is not None else 0), own_end)
    head = key[0]
    if len(key) == 1:
        found = first(rf"^\s*{_key_pattern(head)}\s*[=.]", own)
        return found + 1 if found is not None else (start + 1 if run is not None else 0)
    table, leaf = head, key[1]
    sub = first(rf"^\s*\[\s*run\s*\.\s*{_key_pattern(table)}\s*\]", block)
    if sub is not None:
        sub_end = next((i for i in range(sub + 1, stop) if _HEADER.match(lines[i])), stop)
        found = first(rf"^\s*{_key_pattern(leaf)}\s*=", range(sub + 1, sub_end))
        return (found if found is not None else sub) + 1
    dotted = first(rf"^\s*{_key_pattern(table)}\s*\.\s*{_key_pattern(leaf)}\s*=", own)
    if dotted is not None:
        return dotted + 1
    inline = first(rf"^\s*{_key_pattern(table)}\s*=\s*\{{.*[{{,]\s*{_key_pattern(leaf)}\s*=", own)
    if inline is not None:
        return inline + 1
    return locate(text, run, (table,))


def _syntax_error(path: Path, text: str, error: Exception) -> SuiteError:
    message = str(error)
    match = re.search(r"\(at line (\d+), column (\d+)\)", message)
    if match:
        line, column = int(match.group(1)), int(match.group(2))
        reason = message[: match.start()].strip()
        lines = text.splitlines()
        source = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        key = source.split("=", 1)[0].strip() if "=" in source else source
        near = f" (key '{key}')" if key else ""
        return SuiteError(f"{path}:{line}:{column}: TOML syntax error{near}: {reason}")
    reason = re.sub(r"\s*\(at end of document\)", "", message)
    return SuiteError(f"{path}:{len(text.splitlines())}: TOML syntax error at end of file: {reason}")


def _sweep_values(suite: Suite, index: int, values: Any) -> tuple[Any, ...]:
    if isinstance(values, str):
        try:
            return tuple(parse_range(values, "sweep.values", kind=int, positive=False))
        except FobbenchError:
            pass
        try:
            return tuple(parse_range(values, "sweep.values", kind=float, positive=False))
        except FobbenchError as error:
            raise suite.error(str(error).removeprefix("sweep.values: "), index, ("sweep", "values")) from None
    if isinstance(values, list) and values:
        for value in values:
            if isinstance(value, (dict, list)):
                raise suite.error("sweep values must be numbers or strings", index, ("sweep", "values"))
        return tuple(values)
    raise suite.error("must be a non-empty list or a range string such as \"32..512\"", index,
                      ("sweep", "values"))


def load(path: Path | str) -> Suite:
    """Read and structurally check a suite file (keys, types, names, sweeps).

    Raises:
        SuiteError: naming the file, line and key, for a missing file, a TOML syntax
            error, an unknown key, a missing name/command, a duplicate name, or a bad sweep.
    """
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: no such suite file")
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise _syntax_error(path, text, error) from None
    suite = Suite(path=path, text=text, description=str(data.get("description", "")))
    for key in data:
        if key not in TOP_KEYS:
            raise suite.error(f"unknown top-level key (known: {', '.join(TOP_KEYS)})", None, (key,))
    runs = data.get("run", [])
    if not isinstance(runs, list) or not runs:
        raise suite.error("a suite needs at least one [[run]] table", None, ("run",))
    seen: set[str] = set()
    for index, table in enumerate(runs):
        spec = _run_spec(suite, index, table)
        if spec.name in seen:
            raise suite.error(f"duplicate run name '{spec.name}'", index, ("name",))
        seen.add(spec.name)
        suite.runs.append(spec)
    return suite


def _run_spec(suite: Suite, index: int, table: Any) -> RunSpec:
    """One ``[[run]]`` table checked: known keys, a name, a command, flat options, a sweep."""
    if not isinstance(table, dict):
        raise suite.error("each run must be a [[run]] table", None, ("run",))
    for key in table:
        if key not in RUN_KEYS:
            raise suite.error(f"unknown key (known: {', '.join(RUN_KEYS)})", index, (key,))
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise suite.error("needs name = \"...\" (letters, digits, '.', '_', '-')", index,
                          ("name",) if "name" in table else ())
    command = table.get("command")
    if not isinstance(command, str) or not command.split():
        raise suite.error("needs command = \"...\" (e.g. \"gradcheck\", \"train mnist1d\")", index,
                          ("command",) if "command" in table else ())
    options = table.get("options", {})
    if not isinstance(options, dict):
        raise suite.error("must be a table of option = value", index, ("options",))
    for key, value in options.items():
        if key in RESERVED_OPTIONS:
            raise suite.error(f"--{key} is set by fobbench run for every point", index, ("options", key))
        nested = isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)
        if isinstance(value, dict) or nested:
            raise suite.error("option values are strings, numbers, booleans or flat lists",
                              index, ("options", key))
    option, values = _sweep(suite, index, table.get("sweep"), options)
    return RunSpec(index=index, name=name, command=tuple(command.split()), options=dict(options),
                   sweep_option=option, sweep_values=values, description=str(table.get("description", "")))


def _sweep(suite: Suite, index: int, sweep: Any, options: Mapping[str, Any]
           ) -> tuple[str | None, tuple[Any, ...]]:
    """(swept option, its values) of a run's ``[run.sweep]`` table; (None, ()) without one."""
    if sweep is None:
        return None, ()
    if not isinstance(sweep, dict):
        raise suite.error("must be a table with option and values", index, ("sweep",))
    for key in sweep:
        if key not in SWEEP_KEYS:
            raise suite.error(f"unknown key (known: {', '.join(SWEEP_KEYS)})", index, ("sweep", key))
    option = sweep.get("option")
    if not isinstance(option, str) or not option:
        raise suite.error("needs option = \"<name of the swept option>\"", index, ("sweep",))
    if option in RESERVED_OPTIONS:
        raise suite.error(f"--{option} cannot be swept", index, ("sweep", "option"))
    if option in options:
        raise suite.error(f"'{option}' is both an option and the swept option", index, ("options", option))
    return option, _sweep_values(suite, index, sweep.get("values"))


def _label_value(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "value"


def expand(suite: Suite) -> list[Point]:
    """Every point of the suite, numbered in file order."""
    points: list[Point] = []
    for spec in suite.runs:
        if spec.sweep_option is None:
            combos = [("all", tuple(spec.options.items()))]
        else:
            combos = [
                (f"{spec.sweep_option}-{_label_value(v)}", (*spec.options.items(), (spec.sweep_option, v)))
                for v in spec.sweep_values
            ]
        labels = [label for label, _ in combos]
        if len(set(labels)) != len(labels):
            raise suite.error("two sweep values give the same output name", spec.index, ("sweep", "values"))
        for label, options in combos:
            points.append(Point(len(points), spec.name, label, spec.command, tuple(options)))
    return points


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 1 <= I <= N; FobbenchError naming ``--shard`` otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise FobbenchError(f"--shard: '{text}' is not I/N (e.g. 1/4)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise FobbenchError(f"--shard: '{text}' needs 1 <= I <= N")
    return index, count


def shard(points: Sequence[Point], index: int, count: int) -> list[Point]:
    """The I-th of N slices (1-based): the points whose suite index % N == I - 1."""
    return [p for p in points if p.index % count == index - 1]


# ---------------------------------------------------------------------------------------------
# Checking points against the CLI's commands (the command tree is passed in, duck-typed click).


def _option_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def resolve(root: Any, words: Sequence[str]) -> tuple[Any, list[str], list[str]]:
    """(click command, command words, positional words) for ``words`` below the group ``root``."""
    command, path = root, []
    rest = list(words)
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        command = command.commands[rest[0]]
        path.append(rest.pop(0))
    if command is root or hasattr(command, "commands"):
        known = sorted(getattr(command, "commands", {}))
        raise KeyError(f"unknown command '{' '.join(words)}' (commands: {', '.join(known)})")
    return command, path, rest


def _options_of(command: Any) -> dict[str, Any]:
    table = {}
    for param in getattr(command, "params", []):
        for opt in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
            if opt.startswith("--"):
                table[opt] = param
    return table


def writes_folder(command: Any) -> bool:
    """True when the command's ``--out`` names a folder (its help says so), not a CSV file."""
    param = _options_of(command).get("--out")
    text = str(getattr(param, "help", "") or "").lower()
    return "folder" in text or "directory" in text


def _command(suite: Suite, root: Any, point: Point) -> tuple[Any, list[str], list[str]]:
    """:func:`resolve` for a point, as a SuiteError at its ``command`` key."""
    try:
        return resolve(root, point.command)
    except KeyError as error:
        spec = next(r for r in suite.runs if r.name == point.run)
        raise suite.error(error.args[0], spec.index, ("command",)) from None


def command_words(suite: Suite, root: Any, point: Point) -> tuple[list[str], list[str]]:
    """(command words, positional words) of a point, e.g. ``(["train", "mnist1d"], [])``."""
    _, words, positional = _command(suite, root, point)
    return words, positional


def output(suite: Suite, root: Any, point: Point, out_dir: Path) -> Path:
    """The results file or folder of ``point`` below ``out_dir`` (see :meth:`Point.output`)."""
    command, _, _ = _command(suite, root, point)
    return point.output(out_dir, folder=writes_folder(command))


def _value_args(suite: Suite, run: int, command: Any, words: Sequence[str], key: str,
                value: Any) -> list[str]:
    """The command-line words for one option of ``fobbench <words>``."""
    known = _options_of(command)
    name = _option_name(key) if _option_name(key) in known else f"--{key}"
    param = known.get(name)
    if param is None:
        visible = sorted(o for o in known if o not in {f"--{r}" for r in RESERVED_OPTIONS} | {"--help"})
        raise suite.error(
            f"unknown option {_option_name(key)} of 'fobbench {' '.join(words)}' "
            f"(options: {', '.join(visible)})",
            run, ("options", key),
        )
    if getattr(param, "is_flag", False) and not getattr(param, "count", False):
        if not isinstance(value, bool):
            raise suite.error(f"{name} is a flag: use true or false", run, ("options", key))
        if name in getattr(param, "secondary_opts", []):
            return [name] if value else []
        if value:
            return [name]
        negative = list(getattr(param, "secondary_opts", []))
        return [negative[0]] if negative else []
    if isinstance(value, bool):
        return [name, str(value).lower()]
    if isinstance(value, list):
        return [name, ",".join(_text(v) for v in value)]
    return [name, _text(value)]


def _text(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def argv(suite: Suite, root: Any, point: Point, output: Path, resume: bool = False) -> list[str]:
    """The full ``fobbench`` argument list of a point writing to ``output``.

    :data:`AUTOMATIC_FLAGS` are added when the command has them; ``--resume output``
    replaces ``--out output`` when ``resume`` is set.
    """
    spec = next(r for r in suite.runs if r.name == point.run)
    command, words, positional = _command(suite, root, point)
    args = [*words, *positional]
    for key, value in point.options:
        args += _value_args(suite, spec.index, command, words, key, value)
    known = _options_of(command)
    if resume:
        if "--resume" not in known:
            raise suite.error(f"'fobbench {' '.join(words)}' has no --resume", spec.index, ("command",))
        args += ["--resume", str(output)]
    else:
        if "--out" not in known:
            raise suite.error(f"'fobbench {' '.join(words)}' has no --out option", spec.index, ("command",))
        args += ["--out", str(output)]
    args += [flag for flag in AUTOMATIC_FLAGS if flag in known]
    return args


def _typed(suite: Suite, run: int, command: Any, words: Sequence[str], ctx: Any, key: str,
           value: Any) -> tuple[str, Any]:
    """(parameter name, typed value) of one suite option, converted by the option's own type."""
    flags = _value_args(suite, run, command, words, key, value)  # checks the name and flag values
    known = _options_of(command)
    param = known[flags[0]] if flags else known.get(_option_name(key), known.get(f"--{key}"))
    if getattr(param, "is_flag", False) and not getattr(param, "count", False):
        return param.name, bool(flags) and flags[0] not in getattr(param, "secondary_opts", [])
    text = ",".join(_text(v) for v in value) if isinstance(value, list) else _text(value)
    try:
        return param.name, param.process_value(ctx, text)
    except Exception as error:
        if not hasattr(error, "format_message"):
            raise
        raise suite.error(f"{error.format_message()} (value {value!r})", run, ("options", key)) from None


def values(suite: Suite, root: Any, point: Point, output: Path, resume: bool = False) -> dict[str, Any]:
    """The typed option values of a point, by parameter name, ready for a command's plan.

    Every option the suite leaves out has the command's default; suite values are converted
    by the command's own option types (no command line is built or parsed). ``--out`` (or
    ``--resume``) is ``output``; :data:`AUTOMATIC_FLAGS` are set where the command has them.
    """
    spec = next(r for r in suite.runs if r.name == point.run)
    command, words, _ = _command(suite, root, point)
    ctx = command.make_context(" ".join(["fobbench", *words]), [], resilient_parsing=True)
    result = dict(ctx.params)
    for key, value in point.options:
        name, typed = _typed(suite, spec.index, command, words, ctx, key, value)
        result[name] = typed
    known = _options_of(command)
    destination = known["--resume" if resume else "--out"]
    result[destination.name] = Path(output)
    for flag in AUTOMATIC_FLAGS:
        if flag in known:
            result[known[flag].name] = True
    return result


def validate(suite: Suite, root: Any, points: Sequence[Point], out_dir: Path) -> dict[int, list[str]]:
    """Check every point against its command's parser; returns point index -> argv.

    Parses each point's arguments with the command's own parser (without running it), so an
    unknown command, unknown option, or a value of the wrong type is reported as a
    SuiteError at the line of its key before anything runs.
    """
    result: dict[int, list[str]] = {}
    for point in points:
        spec = next(r for r in suite.runs if r.name == point.run)
        args = argv(suite, root, point, output(suite, root, point, out_dir))
        command, words, _ = _command(suite, root, point)
        try:
            command.make_context(" ".join(["fobbench", *words]), [a for a in args[len(words):]])
        except Exception as error:
            if not hasattr(error, "format_message"):
                raise
            param = getattr(error, "param", None)
            key: tuple[str, ...] = ("command",)
            message = error.format_message()
            if param is not None:
                names = [o[2:] for o in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]]
                chosen = next(
                    ((k, v) for k, v in point.options if _option_name(k)[2:] in names or k in names), None
                )
                if chosen is not None:
                    key = ("sweep", "values") if chosen[0] == spec.sweep_option else ("options", chosen[0])
                    message = f"{message} (value {chosen[1]!r})"
            raise suite.error(message, spec.index, key) from None
        result[point.index] = args
    return result


def describe(point: Point, args: Sequence[str]) -> str:
    """``#3 memory-seq seq-128: fobbench memory ...`` (the dry-run line)."""
    return f"#{point.index} {point.run} {point.label}: fobbench {shlex.join(args)}"


def value_error(suite: Suite, point: Point, message: str) -> SuiteError:
    """A command's one-line error about a point's value, placed at the key that holds it.

    The key is the option the message names (``--seq: ...``, ``--lam (λ) must be ...``); a
    message that names none points at the run's ``[run.options]`` table.
    """
    spec = next(r for r in suite.runs if r.name == point.run)
    first = message.strip().splitlines()[0] if message.strip() else "bad value"
    named = [(key, value) for key, value in point.options
             if re.search(rf"(?<![\w-]){re.escape(_option_name(key))}(?![\w-])", first)]
    if not named:
        return suite.error(first, spec.index, ("options",))
    key, value = named[0]
    where = ("sweep", "values") if key == spec.sweep_option else ("options", key)
    return suite.error(f"{first} (value {value!r})", spec.index, where)
