"""A miniature of ``experiments.train.run_one`` on torch.distributed, for the tests and the
measurements of issue 16 (run as a script, one process per rank).

Without torchrun's variables it is the one-process reference and uses the unchanged
``estimators.meta_gradient`` and ``experiments.train.evaluate``; with them, each rank computes
its slice of the same tasks and the collectives of :mod:`fobbench.distributed` combine them.
It writes ``{"theta", "eval_acc", "eval_ci95", "eval_loss", "world_size", "seconds"}`` with
``torch.save`` from rank 0 only.

    python tests/dist_worker.py OUT.pt --iterations 5                 # 1 process
    torchrun --nproc-per-node 2 tests/dist_worker.py OUT.pt ...       # 2 ranks
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from scipy import stats
from torch import Tensor, nn

from fobbench import distributed as dd
from fobbench.errors import FobbenchError
from fobbench.estimators import EstimatorConfig
from fobbench.experiments.train import evaluate, stream
from fobbench.inner import InnerConfig, solve
from fobbench.meta_optim import apply, make_outer
from fobbench.models.conv1d import Conv1D
from fobbench.params import Data, Params, classification_loss, detached
from fobbench.problems.base import TaskBatch


class Synthetic:
    """3-way tasks of random 1-D signals whose class shifts the mean: learnable, no data files."""

    ways, shots, queries = 3, 5, 10

    def sample(self, split: str, tasks: int, generator: torch.Generator) -> TaskBatch:
        def part(per_class: int) -> Data:
            labels = torch.arange(self.ways).repeat_interleave(per_class).expand(tasks, -1)
            shift = torch.randn(tasks, self.ways, 1, 40, generator=generator)
            x = torch.randn(tasks, self.ways * per_class, 1, 40, generator=generator)
            return x + 2.0 * shift.repeat_interleave(per_class, dim=1), labels.clone()

        return TaskBatch(part(self.shots), part(self.queries))

    def model(self) -> nn.Module:
        return Conv1D(ways=self.ways)


def per_task_eval(model: nn.Module, theta: Params, tasks: TaskBatch, config: EstimatorConfig,
                  part: slice) -> tuple[Tensor, Tensor]:
    """(query losses, query accuracies) of the tasks ``part``, as ``train.evaluate`` adapts them."""
    loss = classification_loss(model)
    theta = detached(theta)

    def one(th: Params, support: Data, query: Data) -> tuple[Tensor, Tensor]:
        phi = solve(th, loss, support, query, 0.0, config.inner)
        logits = torch.func.functional_call(model, phi, (query[0],))
        return nn.functional.cross_entropy(logits, query[1]), (logits.argmax(-1) == query[1]).float().mean()

    support = tuple(d[part] for d in tasks.support)
    query = tuple(d[part] for d in tasks.query)
    with torch.no_grad():
        return torch.func.vmap(one, in_dims=(None, 0, 0))(theta, support, query)


def summarize(losses: Tensor, accs: Tensor) -> tuple[float, float, float]:
    """(mean acc, 95% t half-width, mean loss) exactly as ``train.evaluate`` computes them."""
    acc = accs.double().cpu().numpy()
    n = len(acc)
    half = float(stats.t.ppf(0.975, n - 1) * acc.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return float(acc.mean()), half, float(losses.double().mean())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--meta-batch", type=int, default=5)
    parser.add_argument("--eval-tasks", type=int, default=7)
    parser.add_argument("--method", default="fobmaml-sym")
    parser.add_argument("--outer", default="adam")
    parser.add_argument("--batching", choices=("vmap", "loop"), default="vmap")
    parser.add_argument("--problem", choices=("synthetic", "mnist1d"), default="synthetic")
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to idle after each step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trace", type=Path, default=None, help="also save θ after every step here")
    parser.add_argument("--timeout", type=float, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seed = 0
    try:
        if args.problem == "mnist1d":
            from fobbench.problems.mnist1d import MNIST1DProblem

            problem = MNIST1DProblem(num_samples=args.num_samples)
        else:
            problem = Synthetic()
        config = EstimatorConfig(inner=InnerConfig(steps=5, lr=0.1, lam=2.0), nu=0.1)
        with dd.session(device="cpu", timeout_s=args.timeout) as ctx:
            dd.check_split(args.meta_batch, ctx)
            dd.check_split(args.eval_tasks, ctx, "--eval-tasks")
            # What rank 0 alone knows (its results file, its checkpoint), every rank learns:
            plan = dd.broadcast_object({"start": 0, "writer": ctx.rank} if ctx.is_writer else None, ctx)
            if plan != {"start": 0, "writer": 0}:
                raise FobbenchError(f"{ctx.describe()}: broadcast gave {plan}")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = problem.model()
            theta: Params = dict(model.named_parameters())
            optimizer = make_outer(args.outer, theta.values(), 3e-3)
            loss = classification_loss(model)
            started = time.perf_counter()
            for t in range(1, args.iterations + 1):
                batch = problem.sample("train", args.meta_batch, stream(seed, "train", t))
                grad = dd.meta_gradient_on(ctx, args.method, theta, loss, batch.support, batch.query, config,
                                           batching=args.batching, generator=stream(seed, "noise", t)).grad
                apply(optimizer, theta, grad)
                if args.trace is not None and ctx.is_writer:
                    args.trace.mkdir(parents=True, exist_ok=True)
                    torch.save({n: p.detach().clone() for n, p in theta.items()}, args.trace / f"{t}.pt")
                print(f"rank {ctx.rank} step {t}", flush=True)
                if args.sleep:
                    time.sleep(args.sleep)
            seconds = time.perf_counter() - started
            eval_tasks = problem.sample("eval", args.eval_tasks, stream("eval"))
            if ctx.distributed:
                losses, accs = per_task_eval(model, theta, eval_tasks, config, ctx.slice(args.eval_tasks))
                acc, ci95, mean_loss = summarize(dd.gather_values(losses, args.eval_tasks, ctx),
                                                 dd.gather_values(accs, args.eval_tasks, ctx))
                if not dd.same_on_all_ranks(theta, ctx):
                    raise FobbenchError(f"{ctx.describe()}: θ differs between ranks")
            else:
                result = evaluate(model, theta, eval_tasks, config)
                acc, ci95, mean_loss = result.acc, result.ci95, result.loss
            if ctx.is_writer:
                torch.save({
                    "theta": {n: p.detach().clone() for n, p in theta.items()},
                    "eval_acc": acc, "eval_ci95": ci95, "eval_loss": mean_loss,
                    "world_size": ctx.world_size, "seconds": seconds,
                }, args.out)
    except FobbenchError as error:
        sys.stderr.write(f"fobbench: error: {str(error).splitlines()[0]}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
