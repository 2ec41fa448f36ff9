"""Every command's option values checked before torch, pandas or matplotlib is imported.

A bad value (``--seq 32,``, ``--lam -1``, ``--methods exact`` for ``train``, a missing
``--resume`` file) must answer with one line and exit code 2 in a fraction of a second,
not after the ~3-6 s it takes to import torch. Each ``check_<command>(values)`` below takes
the command's option values by parameter name (as the command function and ``fobbench run``
have them) and raises :class:`~fobbench.errors.FobbenchError` naming the option at the first
bad one. It reads only torch-free modules: the method declarations (:mod:`fobbench.methods`),
the option vocabularies (:mod:`fobbench.choices`), the range syntax (:mod:`fobbench.ranges`),
plugin names and the writability probes (:mod:`fobbench.paths`).

The commands' own configuration objects check the same things again once they are built
(a second line of defence for library callers), with the same single-value checks
(:mod:`fobbench.validate`); what needs the data, a plugin's code or a device (a CUDA device
present, a factory that builds) is left to them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fobbench import choices, methods
from fobbench.errors import FobbenchError
from fobbench.paths import check_writable_dir, check_writable_file
from fobbench.plugin_names import MODELS, PROBLEMS, check_spec
from fobbench.ranges import parse_range, parse_seeds
from fobbench.validate import integer, nonnegative, one_of, positive, word

Values = Mapping[str, Any]
"""Option values of one command by parameter name (Typer enums or plain strings alike)."""


def threads(value: object) -> None:
    """``--threads``: None (the command's default) or an integer >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise FobbenchError(f"--threads must be >= 1 (got {value})")


def nu_value(value: object, option: str = "--nu", allow_auto: bool = True) -> float | str:
    """A ν: a non-zero finite number (or ``auto`` where the command takes it); the parser of
    every ``--nu`` (:func:`fobbench.cli.options.parse_nu`), with ``EstimatorConfig``'s message."""
    text = str(value).strip()
    if allow_auto and text.lower() == methods.AUTO:
        return methods.AUTO
    try:
        nu = float(text)
    except ValueError:
        raise FobbenchError(f"{option} must be a non-zero number or 'auto' (got '{value}')") from None
    if not math.isfinite(nu) or nu == 0:
        raise FobbenchError(f"{option} (ν) must be a non-zero finite number or 'auto' (got {nu})")
    return nu


def inner_solver(p: Values, steps: str = "inner_steps", optimizer: str | None = None) -> None:
    """The inner solver's values: K >= 1, α > 0, λ >= 0, a known optimizer."""
    if steps in p:
        integer(p[steps], "--inner-steps (K)")
    if p.get("inner_lr") is not None:
        positive(p["inner_lr"], "--inner-lr (inner step size)")
    if p.get("lam") is not None:
        nonnegative(p["lam"], "--lam (λ)")
    if optimizer is not None and optimizer in p:
        one_of(p[optimizer], choices.INNER_OPTIMIZERS, "--inner-optimizer", "inner optimizer")


def estimator_settings(p: Values, chosen: list[str], allow_auto: bool = False) -> None:
    """ν, CG steps, ES samples and σ, the inner protocol, and λ > 0 for the methods that need it."""
    if "nu" in p:
        nu_value(p["nu"], allow_auto=allow_auto)
    if "cg_steps" in p and not isinstance(p["cg_steps"], str):
        integer(p["cg_steps"], "--cg-steps")
    if "es_samples" in p:
        integer(p["es_samples"], "--es-samples")
    if "es_sigma" in p:
        positive(p["es_sigma"], "--es-sigma")
    if "inner_protocol" in p:
        one_of(p["inner_protocol"], methods.PROTOCOLS, "--inner-protocol")
    lam = p.get("lam")
    if lam is not None:
        for name in chosen:
            if methods.METHODS[name].proximal and lam <= 0:
                raise FobbenchError(
                    f"--lam (λ) must be > 0 for {name} (its estimator needs the proximal term)")


def figure_format(p: Values) -> None:
    """``--format``: one of :data:`fobbench.choices.FIGURE_FORMATS`."""
    fmt = word(p.get("fmt", "png"))
    if fmt not in choices.FIGURE_FORMATS:
        raise FobbenchError(f"--format: '{fmt}' is not one of {', '.join(choices.FIGURE_FORMATS)}")


def _out_or_resume(p: Values, out_key: str) -> tuple[Any, Any]:
    """(``--out``, ``--resume``) values; an error when both are given."""
    out, resume = p.get(out_key), p.get("resume")
    if out is not None and resume is not None:
        raise FobbenchError("give either --out or --resume, not both")
    return out, resume


def results_file(p: Values, out_key: str = "out_file") -> None:
    """``--out FILE`` / ``--resume FILE``: not both; a resumed file exists; either can be written."""
    out, resume = _out_or_resume(p, out_key)
    if resume is not None:
        path = Path(resume)
        check_writable_file(path, "--resume")
        if not path.is_file():
            raise FobbenchError(f"--resume: {path} does not exist")
    elif out is not None:
        check_writable_file(Path(out), "--out")


def results_folder(p: Values, out_key: str = "out_dir") -> None:
    """``--out DIR`` / ``--resume DIR`` of a command writing one CSV per output into a folder."""
    out, resume = _out_or_resume(p, out_key)
    if resume is not None:
        path = Path(resume)
        if path.is_file():  # one of the run's CSVs: the runner names the folder to resume
            return
        if not path.is_dir():
            raise FobbenchError(f"--resume: {path} is not a results folder (it does not exist)")
        check_writable_dir(path, "--resume")
    elif out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise FobbenchError(f"--out: {path} exists and is not a folder (this command writes one CSV per "
                                "sub-experiment into a folder)")
        check_writable_dir(path, "--out")


def check_memory(p: Values) -> None:
    """``fobbench memory`` (the sizes, methods, settings and files of :func:`fobbench.cli.memory.plan`)."""
    arch, device = word(p["arch"]), word(p["device"])
    threads(p["threads"])
    model = p.get("model")
    if model is not None:
        check_spec(MODELS, model)
        arch = "plugin"
    one_of(arch, choices.MEMORY_ARCHS, "--arch")
    if arch == "plugin" and model is None:
        raise FobbenchError("--arch plugin needs --model")
    one_of(device, choices.DEVICES, "--device")
    if p["estimate"] and device == "cuda":
        raise FobbenchError(
            "--estimate runs on the meta device and predicts CPU accounting; drop --device cuda")
    limit = p.get("limit")
    if limit is not None and not (limit > 0 and math.isfinite(limit)):
        raise FobbenchError(f"--limit must be a positive number of MiB (got {limit})")
    one_of(p["batching"], methods.BATCHING, "--batching")
    one_of(p["sdpa"], choices.SDPA_MODES, "--sdpa")
    for name in ("tasks", "batch", "ways", "depth", "heads", "ffn", "image", "in_channels"):
        if p.get(name) is not None:
            integer(p[name], f"--{name.replace('_', '-')}")
    positive(p["meta_lr"], "--meta-lr")
    inner_solver(p)
    parse_seeds(str(p["seeds"]), "--seeds")
    chosen = methods.parse_methods(p["methods"], "--methods", allow_exact=False)
    estimator_settings(p, chosen)
    sizes = memory_sizes(arch, p.get("channels"), p.get("d_model"), p.get("seq"), p.get("sizes"))
    for d_model in sizes.get("d_model", []):
        if d_model % p["heads"]:
            raise FobbenchError(f"--d-model {d_model} is not divisible by --heads {p['heads']}")
    swept = [name for name, values in sizes.items() if len(values) > 1]
    if len(swept) > 1:
        both = " and ".join(f"--{n.replace('_', '-')}" for n in swept)
        raise FobbenchError(f"sweep one size at a time: {both} both have several values")
    figure_format(p)
    results_file(p)


def memory_sizes(arch: str, channels: str | None, d_model: str | None, seq: str | None,
                 sizes: str | None = None) -> dict[str, list[int]]:
    """Swept and fixed sizes of ``memory`` from the options, with the paper's sweeps as defaults."""
    if arch == "plugin":
        if channels is not None or d_model is not None or seq is not None:
            raise FobbenchError("--model sweeps --sizes; --channels, --d-model and --seq apply to --arch")
        if sizes is None:
            raise FobbenchError("--model needs --sizes (the values passed to the factory, e.g. 8..64)")
        return {"size": parse_range(sizes, "--sizes")}
    if sizes is not None:
        raise FobbenchError("--sizes applies to --model, not to --arch")
    if arch == "convnet":
        if d_model is not None or seq is not None:
            raise FobbenchError("--d-model and --seq apply to --arch transformer, not convnet")
        return {"channels": parse_range("16..256" if channels is None else channels, "--channels")}
    if channels is not None:
        raise FobbenchError("--channels applies to --arch convnet, not transformer")
    d_values = parse_range("128" if d_model is None else d_model, "--d-model")
    # Fig. 6 (App. B) sweeps seq at d_model 128; Fig. 3 sweeps d_model at seq 128.
    seq_default = "128" if len(d_values) > 1 else "32..512"
    return {"d_model": d_values, "seq": parse_range(seq_default if seq is None else seq, "--seq")}


def _grid(p: Values, key: str, kind: type, default: str | None = None) -> list[Any]:
    option = "--" + key.replace("_", "-")
    text = p.get(key) if p.get(key) is not None else default
    return [] if text is None else parse_range(str(text), option, kind)


def check_gradcheck(p: Values) -> None:
    """``fobbench gradcheck`` on the quadratic tasks or a network (``--problem``)."""
    threads(p["threads"])
    network = p.get("problem") is not None
    if network:
        check_spec(PROBLEMS, p["problem"])
    else:
        for name in ("activation", "pool", "hidden"):
            if p.get(name) is not None:
                raise FobbenchError(f"--{name} applies to a network (--problem), not to the quadratic tasks")
    results_folder(p)
    chosen = methods.parse_methods(p["methods"], allow_exact=not network)
    _grid(p, "inner_steps", int)
    nu_value(p["nu"], allow_auto=True)
    one_of(p.get("dtype", "float64"), choices.GRADCHECK_DTYPES, "--dtype")
    if p.get("lam") is not None:
        positive(p["lam"], "--lam (λ)")
    _grid(p, "nu_grid", float)
    _grid(p, "cg_steps", int)
    integer(p["es_samples"], "--es-samples")
    positive(p["es_sigma"], "--es-sigma")
    parse_seeds(str(p["seeds"]), "--seeds")
    if p.get("inner_lr") is not None:
        positive(p["inner_lr"], "--inner-lr (inner step size)")
    if p.get("tasks") is not None:
        integer(p["tasks"], "--tasks")
    if network:
        if p.get("hidden") is not None:
            integer(p["hidden"], "--hidden")
        integer(p.get("check_tasks", 1), "--check-tasks", least=0)
        return
    experiments = choices.parse_gradcheck_experiments(p["experiments"])
    nu_ks = _grid(p, "nu_inner_steps", int)
    lams = _grid(p, "lam_grid", float)
    rate_nus = _grid(p, "rate_nu", float)
    rate_deltas = _grid(p, "rate_delta", float)
    for value in lams:
        positive(value, "--lam-grid (λ)")
    short = (rate_nus and len(rate_nus) < 3) or len(rate_deltas) < 3 or len(nu_ks) < 3
    if "rates" in experiments and short:
        raise FobbenchError("rates: --rate-nu, --rate-delta and --nu-inner-steps need at least 3 values each")
    integer(p["train_inner_steps"], "--train-inner-steps")
    integer(p["iters"], "--iters")
    one_of(p["outer"], choices.OUTER_OPTIMIZERS, "--outer", "optimizer")
    if p.get("meta_lr") is not None:
        positive(p["meta_lr"], "--meta-lr")
    integer(p["dim"], "--dim")
    if not (math.isfinite(p["cond"]) and p["cond"] >= 1):
        raise FobbenchError(f"--cond must be >= 1 (got {p['cond']})")
    one_of(p["batching"], methods.BATCHING, "--batching")
    if ("error_vs_nu" in experiments or "rates" in experiments) and not any(
            methods.METHODS[m].uses_nu for m in chosen):
        raise FobbenchError("error_vs_nu and rates need a method that uses nu in --methods "
                            f"({', '.join(methods.names(uses_nu=True))})")


def check_train(p: Values) -> None:
    """``fobbench train mnist1d|omniglot|problem``."""
    if "problem" in p:
        check_spec(PROBLEMS, p["problem"])
    figure_format(p)
    option = "--methods" if p.get("methods") else "--method"
    chosen = methods.parse_methods(p.get("methods") or p["method"], option, allow_exact=False)
    inner_solver(p, optimizer="inner_optimizer")
    estimator_settings(p, chosen, allow_auto=True)
    parse_seeds(str(p["seeds"]), "--seeds")
    for option, key, least in (("--iterations", "iterations", 1), ("--meta-batch", "meta_batch", 1),
                               ("--eval-every", "eval_every", 1), ("--eval-tasks", "eval_tasks", 2),
                               ("--checkpoint-every", "checkpoint_every", 1), ("--ways", "ways", 2),
                               ("--shots", "shots", 1), ("--queries", "queries", 1),
                               ("--num-samples", "num_samples", 100), ("--image-size", "image_size", 4)):
        if key in p:
            integer(p[key], option, least)
    if p.get("chunk_size") is not None:
        integer(p["chunk_size"], "--chunk-size")
    positive(p["meta_lr"], "--meta-lr")
    one_of(p["outer"], choices.OUTER_OPTIMIZERS, "--outer", "optimizer")
    one_of(p["batching"], methods.BATCHING, "--batching")
    if p.get("compile"):
        if word(p["batching"]) == "loop":
            raise FobbenchError("--compile compiles the vmapped meta-gradient; not with --batching loop")
        for name in chosen:
            methods.check_compilable(methods.METHODS[name], p["nu"])
    if word(p["device"]) not in choices.DEVICES:
        raise FobbenchError(f"--device must be cpu or cuda (got {word(p['device'])})")
    if p.get("dist_backend") is not None:
        one_of(p["dist_backend"], choices.DIST_BACKENDS, "--dist-backend")
    if "split" in p and p["split"] not in choices.OMNIGLOT_SPLITS:
        raise FobbenchError(f"--split: unknown Omniglot split '{p['split']}' "
                            f"(choose from {', '.join(choices.OMNIGLOT_SPLITS)})")
    threads(p["threads"])
    results_file(p)


def check_speed(p: Values) -> None:
    """``fobbench speed``."""
    figure_format(p)
    one_of(p["problem"], ("mnist1d", "omniglot"), "--problem")
    chosen = methods.parse_methods(p["methods"], allow_exact=False)
    batchings = [b.strip() for b in str(p["batching"]).split(",") if b.strip()]
    for batching in batchings:
        one_of(batching, choices.SPEED_BATCHINGS, "--batching")
    for meta_batch in parse_range(str(p["meta_batch"]), "--meta-batch", kind=int):
        integer(meta_batch, "--meta-batch")
    if p.get("peers"):
        names = choices.PEERS if p["peers"].strip() == "all" else [n.strip() for n in p["peers"].split(",")
                                                                   if n.strip()]
        for name in names:
            if name not in choices.PEERS:
                raise FobbenchError(
                    f"--peers: unknown peer '{name}' (choose from {', '.join(choices.PEERS)})")
    if len(parse_seeds(str(p["seeds"]), "--seeds")) != 1:
        raise FobbenchError("--seeds: speed times one model and meta-batch; give one seed")
    if word(p["device"]) not in choices.DEVICES:
        raise FobbenchError(f"--device must be cpu or cuda (got {word(p['device'])})")
    integer(p["rounds"], "--rounds")
    positive(p["min_run_time"], "--min-run-time", " seconds")
    inner_solver(p)
    estimator_settings(p, chosen)
    for option, key, least in (("--ways", "ways", 2), ("--shots", "shots", 1), ("--queries", "queries", 1),
                               ("--num-samples", "num_samples", 100)):
        integer(p[key], option, least)
    threads(p["threads"])
    results_file(p)


def check_compare(p: Values) -> None:
    """``fobbench compare BASE NEW``: the report files can be written, both inputs exist,
    tolerances, α and --kind make sense."""
    for key in ("markdown", "csv"):
        path = p.get(key)
        if path is not None and Path(path).is_dir():
            raise FobbenchError(f"--{key}: {path} is a folder; give a file name")
        if path is not None:
            check_writable_file(path, f"--{key}")  # before reading and comparing anything
    for name in ("base", "new"):
        if not Path(p[name]).exists():
            raise FobbenchError(f"{p[name]}: no such file or folder")
    positive(p["factor"], "--factor")
    for key in ("rtol", "atol"):
        value = p[key]
        if not (math.isfinite(value) and value >= 0):
            raise FobbenchError(f"--{key} must be >= 0 (got {value})")
    if not 0 < p["alpha"] < 1:
        raise FobbenchError(f"--alpha must be between 0 and 1 (got {p['alpha']})")
    if p["kind"] not in choices.COMPARE_KINDS:
        raise FobbenchError(f"--kind: '{p['kind']}' is not one of {', '.join(choices.COMPARE_KINDS)}")


def check_plot(p: Values) -> Path:
    """``fobbench plot PATH``: the figure folder can be written, PATH exists, the format is known.

    Returns:
        The figure folder (``--out``, or the one rule's folder beside PATH).
    """
    from fobbench.paths import figure_dir

    out_dir = figure_dir(p["path"]) if p.get("out_dir") is None else Path(p["out_dir"])
    check_writable_dir(out_dir, "--out")  # before reading and drawing anything
    if not Path(p["path"]).exists():
        raise FobbenchError(f"{p['path']}: no such file or folder")
    figure_format(p)
    return out_dir


CHECKS: dict[tuple[str, ...], Callable[[Values], Any]] = {
    ("compare",): check_compare,
    ("gradcheck",): check_gradcheck,
    ("memory",): check_memory,
    ("plot",): check_plot,
    ("speed",): check_speed,
    ("train", "mnist1d"): check_train,
    ("train", "omniglot"): check_train,
    ("train", "problem"): check_train,
}
"""Command words -> the check of its option values (``info`` and ``run`` take no values to check
beyond what the parser and the suite loader do)."""
