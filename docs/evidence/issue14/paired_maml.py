"""Issue 14 evidence: MAML vmap meta-gradient, adjoint (this branch) vs torch.func.grad through
the solver (before), paired: each round runs both, in alternating order; CPU time of this
process, 1 thread.

    PYTHONPATH=$PWD python docs/evidence/issue14/paired_maml.py [ROUNDS]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

import fobbench.estimators.maml as maml_module
from fobbench.estimators import EstimatorConfig
from fobbench.experiments.speed import build, fobbench_call
from fobbench.inner import solve
from fobbench.problems.mnist1d import MNIST1DProblem

torch.set_num_threads(1)
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
print("load average before", os.getloadavg())
work = build(MNIST1DProblem(ways=3, shots=5, queries=10, num_samples=12000), 16, 0, "cpu")
after = fobbench_call("maml", "vmap", work, EstimatorConfig())


def through_solver(theta, loss, s, q, cfg):
    return torch.func.grad(lambda th: loss(solve(th, loss, s, q, 0.0, cfg.inner), q))(theta)


def before():
    saved = maml_module.adjoint
    maml_module.adjoint = through_solver
    try:
        return after()
    finally:
        maml_module.adjoint = saved


times: dict[str, list[float]] = {"before": [], "after": []}
before(), after()
for i in range(rounds):
    order = (("before", before), ("after", after)) if i % 2 else (("after", after), ("before", before))
    for name, fn in order:
        start = time.process_time()
        fn()
        times[name].append(time.process_time() - start)
for name, values in times.items():
    print(f"{name:7s} median {statistics.median(values) * 1e3:6.1f} ms  min {min(values) * 1e3:6.1f} ms")
ratios = [a / b for a, b in zip(times["after"], times["before"], strict=True)]
print(f"paired after/before: median {statistics.median(ratios):.3f}, quartiles "
      f"{[round(q, 3) for q in statistics.quantiles(ratios, n=4)]}")
print("load average after", os.getloadavg())
