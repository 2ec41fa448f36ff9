"""torch.distributed core (issue 16): context from torchrun's environment, task slices,
collectives that reproduce the one-process meta-gradient, and fail-fast on a dead rank.

The multi-process tests start two real gloo ranks on CPU (``tests/dist_worker.py``, with the
variables torchrun would set) next to a one-process reference.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import time
from pathlib import Path

import dist_worker  # tests/dist_worker.py: imported here so that forked ranks inherit it
import pytest
import torch

from fobbench import distributed as dd
from fobbench.errors import FobbenchError
from fobbench.estimators import EstimatorConfig, meta_gradient, per_task
from fobbench.inner import InnerConfig
from fobbench.models.conv1d import Conv1D
from fobbench.params import classification_loss

ROOT = Path(__file__).resolve().parents[1]
FORK = multiprocessing.get_context("fork")


# ----------------------------------------------------------------------------------------
# Context and slices (no processes)


def test_no_torchrun_variables_is_a_single_process_noop() -> None:
    ctx = dd.from_env({}, device="cpu")
    assert ctx == dd.SINGLE and not ctx.distributed and ctx.is_writer
    assert ctx.slice(7) == slice(0, 7)
    grads = {"w": torch.arange(6.0).reshape(2, 3)}
    assert dd.all_reduce_sum(grads, ctx)["w"] is grads["w"]
    assert torch.equal(dd.mean_over_tasks(grads, 2, ctx)["w"], grads["w"].mean(0))
    with dd.session(env={}) as same:
        assert same == dd.SINGLE


def test_context_reads_torchrun_variables_and_picks_the_backend() -> None:
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "FOBBENCH_DIST_TIMEOUT": "12",
           "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}
    ctx = dd.from_env(env, device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.backend, ctx.device, ctx.timeout_s) == (
        3, 4, 1, "gloo", "cpu", 12.0)
    assert not ctx.is_writer and ctx.describe() == "rank 3/4 (gloo, cpu)"
    assert dd.from_env(env, timeout_s=5).timeout_s == 5
    if torch.distributed.is_nccl_available():
        assert dd.choose_backend("cuda") == "nccl"
    else:
        with pytest.raises(FobbenchError, match="no nccl backend"):
            dd.choose_backend("cuda")
    assert dd.choose_backend("cuda", "gloo") == "gloo"


MASTER = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize(("env", "fragment"), [
    ({"RANK": "0"}, "$WORLD_SIZE, $LOCAL_RANK not set"),
    ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "$RANK='x' is not an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "0 <= $RANK < $WORLD_SIZE"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h"}, "$MASTER_PORT not set"),
    ({**MASTER, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "FOBBENCH_DIST_TIMEOUT": "soon"},
     "not a number"),
    ({**MASTER, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "FOBBENCH_DIST_TIMEOUT": "-1"},
     "> 0 seconds"),
])
def test_bad_environment_is_one_line(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(FobbenchError) as error:
        dd.from_env(env)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_sigterm_from_the_launcher_becomes_one_line() -> None:
    ctx = dd.DistContext(rank=1, world_size=2, backend="gloo")
    before = signal.getsignal(signal.SIGTERM)
    stopped = r"^rank 1/2 \(gloo, cpu\): stopped by the launcher \(SIGTERM\)"
    with pytest.raises(FobbenchError, match=stopped), dd.stop_on_sigterm(ctx):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises as soon as the signal arrives
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
    with dd.stop_on_sigterm(dd.SINGLE):  # a single process keeps its own handling
        assert signal.getsignal(signal.SIGTERM) is before


def test_backend_override_is_checked() -> None:
    with pytest.raises(FobbenchError, match="unknown 'mpi'"):
        dd.choose_backend("cpu", "mpi")
    with pytest.raises(FobbenchError, match="nccl needs --device cuda"):
        dd.choose_backend("cpu", "nccl")


@pytest.mark.parametrize("n_tasks", [0, 1, 5, 16, 17, 32])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_task_slices_cover_the_batch_in_order_and_differ_by_at_most_one(n_tasks: int, world: int) -> None:
    slices = [dd.task_slice(n_tasks, r, world) for r in range(world)]
    covered = [i for s in slices for i in range(n_tasks)[s]]
    assert covered == list(range(n_tasks))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_split_smaller_than_the_world_is_refused() -> None:
    ctx = dd.DistContext(rank=0, world_size=4, backend="gloo")
    dd.check_split(4, ctx)
    with pytest.raises(FobbenchError, match="--meta-batch 3 is smaller than the 4 ranks"):
        dd.check_split(3, ctx)
    with pytest.raises(FobbenchError):
        dd.task_slice(4, 4, 4)


def test_sliced_per_task_estimates_are_bitwise_those_of_the_whole_batch(one_thread) -> None:
    """The premise of N-independence: a task's estimate does not depend on its batch-mates
    (vmap batch size) nor, for ES-MAML, on which slice draws its random directions."""
    torch.manual_seed(0)
    model = Conv1D(ways=3, channels=4)
    theta, loss = dict(model.named_parameters()), classification_loss(model)
    support = (torch.randn(5, 6, 1, 40), torch.randint(0, 3, (5, 6)))
    query = (torch.randn(5, 9, 1, 40), torch.randint(0, 3, (5, 9)))
    config = EstimatorConfig(inner=InnerConfig(steps=2, lr=0.1, lam=2.0), es_samples=2)
    for method in ("fobmaml-sym", "esmaml"):
        whole = per_task(method, theta, loss, support, query, config,
                         generator=torch.Generator().manual_seed(1))
        parts = [per_task(method, theta, loss, support, query, config,
                          generator=torch.Generator().manual_seed(1), part=dd.task_slice(5, r, 2))
                 for r in range(2)]
        for name in theta:
            assert torch.equal(torch.cat([p[name] for p in parts]), whole[name]), (method, name)
    mean = meta_gradient("fobmaml-sym", theta, loss, support, query, config, part=slice(3, 5))
    assert mean.tasks == 2
    loop = meta_gradient("fobmaml-sym", theta, loss, support, query, config, batching="loop",
                         part=slice(3, 5))
    assert loop.tasks == 2
    for name in theta:
        torch.testing.assert_close(loop.grad[name], mean.grad[name], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------
# Real ranks (gloo on CPU)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(argv: list[str], env: dict[str, str], log: str) -> None:
    """A forked rank: torchrun's variables, stdout to ``log``, stderr to ``log.err``, then the
    worker's exit code."""
    os.environ.update(env)
    for fd, path in ((1, log), (2, log + ".err")):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    code = dist_worker.main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _launch(out: Path, world: int, *args: str) -> list[tuple[multiprocessing.Process, Path]]:
    """``world`` gloo ranks of the worker, forked from this (already importing) process with the
    variables torchrun sets: no interpreter start-up, no agent in between."""
    port = str(_free_port())
    ranks = []
    for r in range(world):
        env = {"RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}
        log = out.with_name(f"{out.stem}-rank{r}.log")
        proc = FORK.Process(target=_rank_main, args=([str(out), *args], env, str(log)))
        proc.start()
        ranks.append((proc, log))
    return ranks


def _one_process(out: Path, *args: str) -> None:
    """The one-process reference, in this process (no torchrun variables)."""
    assert dist_worker.main([str(out), *args]) == 0


def _max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over tensors of max|a − b| / max|a| (0 where a tensor is all zeros in both)."""
    return max(float((a[n] - b[n]).abs().max() / a[n].abs().max().clamp_min(1e-30)) for n in a)


def _global_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """‖a − b‖ / ‖a‖ over all tensors at once."""
    diff = sum(float((a[n] - b[n]).double().pow(2).sum()) for n in a) ** 0.5
    return diff / max(sum(float(a[n].double().pow(2).sum()) for n in a) ** 0.5, 1e-30)


@pytest.mark.parametrize(("batching", "outer"), [("vmap", "adam"), ("loop", "sgd")])
def test_two_gloo_ranks_train_the_same_theta_as_one_process(tmp_path: Path, batching: str, outer: str,
                                                             one_thread) -> None:
    """5 tasks over 2 ranks (3 + 2) and 7 evaluation tasks (4 + 3): θ after 4 outer steps of
    fobmaml-sym and the evaluation's mean, t-interval and loss equal the one-process run.

    With vmap batching the task-ordered gather is bitwise, so it holds under Adam. With loop
    batching each rank sums its tasks and the sums are all-reduced: the summation order differs
    (~1e-9 in the meta-gradient) and Adam turns that into lr-sized differences (the conv biases
    before BatchNorm have a true gradient of 0, i.e. rounding noise near Adam's ε = 1e-8, and
    their steps feed back), so it is checked under SGD, where θ stays within ~1e-7.
    """
    args = ("--iterations", "4", "--meta-batch", "5", "--eval-tasks", "7", "--batching", batching,
            "--outer", outer)
    started = time.perf_counter()
    ranks = _launch(tmp_path / "two.pt", 2, *args)
    _one_process(tmp_path / "one.pt", *args)
    for proc, log in ranks:
        proc.join(120)
        assert proc.exitcode == 0, Path(f"{log}.err").read_text()
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (a["world_size"], b["world_size"]) == (1, 2)
    exact = all(torch.equal(a["theta"][n], b["theta"][n]) for n in a["theta"])
    relative = _max_rel(a["theta"], b["theta"])
    seconds = time.perf_counter() - started
    overall = _global_rel(a["theta"], b["theta"])
    print(f"{batching}/{outer}: bitwise {exact}, max rel diff {relative:.2e}, global {overall:.2e}, "
          f"{seconds:.1f} s")
    if batching == "vmap":  # task-ordered gather + the same mean(dim=0): bitwise
        assert exact
        assert relative == 0
    # loop: the per-rank sums round differently (~1e-7 of the meta-gradient); per tensor, the
    # BatchNorm shifts of size ~1e-4 amplify that, so the bound is on the global norm (NOTES.md).
    assert overall <= 1e-5
    assert _max_rel(a["theta"], {n: torch.zeros_like(v) for n, v in a["theta"].items()}) > 0
    for key in ("eval_acc", "eval_ci95", "eval_loss"):
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key


def test_a_killed_rank_ends_the_other_with_one_line_in_bounded_time(tmp_path: Path) -> None:
    (survivor, log), (victim, _) = _launch(tmp_path / "x.pt", 2, "--iterations", "1000", "--sleep", "0.05",
                                           "--timeout", "20")
    deadline = time.monotonic() + 90
    while "step 2" not in (log.read_text() if log.exists() else ""):  # both ranks are in the loop
        assert time.monotonic() < deadline and survivor.is_alive(), Path(f"{log}.err").read_text()
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    survivor.join(60)
    waited = time.monotonic() - killed
    victim.join(10)
    err = Path(f"{log}.err").read_text()
    lines = [line for line in err.splitlines() if line.strip()]
    print(f"survivor exited {survivor.exitcode} {waited:.2f} s after the kill: {err.strip()}")
    assert survivor.exitcode == 2, err
    assert len(lines) == 1 and lines[0].startswith("fobbench: error: rank 0/2 (gloo, cpu): another rank"), err
    assert waited < 25, waited  # gloo notices the closed connection; the 20 s timeout bounds a stall


def test_a_stalled_rank_ends_the_other_after_the_timeout(tmp_path: Path) -> None:
    """A peer that is alive but stops answering (SIGSTOP) is caught by the collective timeout."""
    (survivor, log), (victim, _) = _launch(tmp_path / "x.pt", 2, "--iterations", "1000", "--sleep", "0.05",
                                           "--timeout", "3")
    deadline = time.monotonic() + 90
    while "step 2" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and survivor.is_alive(), Path(f"{log}.err").read_text()
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        survivor.join(30)
        waited = time.monotonic() - stopped
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
    err = Path(f"{log}.err").read_text()
    print(f"survivor exited {survivor.exitcode} {waited:.2f} s after the stall: {err.strip()}")
    assert survivor.exitcode == 2 and len(err.strip().splitlines()) == 1, err
    assert "timeout 3 s" in err
    assert 2 < waited < 15, waited
