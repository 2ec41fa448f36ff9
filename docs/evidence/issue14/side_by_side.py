"""Issue 14 evidence: where a vmapped meta-gradient's time goes, and before/after of this branch.

Run from the repository root (peers need /work/venv-peers or `pip install 'fobbench[peers]'`):

    PYTHONPATH=$PWD python docs/evidence/issue14/side_by_side.py [ROUNDS]

1 torch thread; contenders are interleaved round by round and timed by this process's CPU
time (time.process_time), which a loaded shared machine disturbs less than wall time; each
figure is the median over ROUNDS (default 10) calls. "before" runs the previous code paths
(two unshared FO-B-MAML solves; MAML as torch.func.grad through the solver), patched in.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import fobbench.estimators.fobmaml as fobmaml_module
import fobbench.estimators.maml as maml_module
from fobbench.estimators import EstimatorConfig
from fobbench.experiments.speed import build, fobbench_call, peer_call
from fobbench.inner import solve, solve_displacement
from fobbench.measure.floor import pass_inputs, plain_pass
from fobbench.params import classification_loss, detached, relative_error
from fobbench.peers import PEERS, unavailable
from fobbench.problems.mnist1d import MNIST1DProblem

torch.set_num_threads(1)
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10


def bench(fns: dict, rounds: int = ROUNDS, reps: int = 1) -> dict:
    for f in fns.values():
        f()
    times: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            for _ in range(reps):
                start = time.process_time()
                f()
                times[k].append(time.process_time() - start)
    return {k: statistics.median(v) for k, v in times.items()}


print("load average before", os.getloadavg())
problem = MNIST1DProblem(ways=3, shots=5, queries=10, num_samples=12000)
work = build(problem, 16, 0, "cpu")
config = EstimatorConfig()
K = config.inner.steps


def patched(method: str, module: object, name: str, replacement: object):
    call = fobbench_call(method, "vmap", work, config)

    def run():
        saved = getattr(module, name)
        setattr(module, name, replacement)
        try:
            return call()
        finally:
            setattr(module, name, saved)

    return run


def old_difference(theta, loss, s, q, cfg, high, low):
    scale = -cfg.inner.lam / (high - low)
    a = solve_displacement(theta, loss, s, q, high, cfg.inner)
    b = solve_displacement(theta, loss, s, q, low, cfg.inner)
    return {n: scale * (a[n] - b[n]) for n in theta}


def old_maml(theta, loss, s, q, cfg):
    return torch.func.grad(lambda th: loss(solve(th, loss, s, q, 0.0, cfg.inner), q))(theta)


# 1. Before/after of the methods against the honest floor's passes and the peers.
inputs = pass_inputs(work.batch.support, work.batch.query)
runs = {f"pass_{kind}": (lambda kind=kind: plain_pass(work.model, *inputs[kind]))
        for kind in ("both", "support", "query")}
runs |= {
    "fobmaml-sym vmap before": patched("fobmaml-sym", fobmaml_module, "_difference", old_difference),
    "fobmaml-sym vmap after": fobbench_call("fobmaml-sym", "vmap", work, config),
    "fomaml vmap": fobbench_call("fomaml", "vmap", work, config),
    "maml vmap before": patched("maml", maml_module, "adjoint", old_maml),
    "maml vmap after": fobbench_call("maml", "vmap", work, config),
    "maml loop": fobbench_call("maml", "loop", work, config),
}
peers = [name for name in ("higher", "torchopt") if unavailable(PEERS[name]) is None]
runs |= {f"maml {name}": peer_call(PEERS[name], "maml", work, config) for name in peers}
print("maml before vs after (float32 rel. error)",
      relative_error(runs["maml vmap before"](), runs["maml vmap after"]()))
print("fobmaml-sym before vs after (float32 rel. error)",
      relative_error(runs["fobmaml-sym vmap before"](), runs["fobmaml-sym vmap after"]()))
r = bench(runs)
for k, v in r.items():
    print(f"  {k:28s} {v * 1e3:8.1f} ms")
floor_sym_2k, floor_sym = 2 * K * r["pass_both"], (2 * K - 1) * r["pass_both"]
floor_fo = K * r["pass_support"] + r["pass_query"]
print(f"fobmaml-sym before / floor(2K passes)  {r['fobmaml-sym vmap before'] / floor_sym_2k:.2f}")
print(f"fobmaml-sym after  / floor(2K-1)       {r['fobmaml-sym vmap after'] / floor_sym:.2f}"
      f"   (after / floor(2K): {r['fobmaml-sym vmap after'] / floor_sym_2k:.2f})")
print(f"fomaml / floor                         {r['fomaml vmap'] / floor_fo:.2f}")
print(f"maml vmap before, after / floor        {r['maml vmap before'] / floor_fo:.2f}, "
      f"{r['maml vmap after'] / floor_fo:.2f}")
if peers:
    fastest = min(r[f"maml {name}"] for name in peers)
    print(f"fastest peer / maml vmap before, after {fastest / r['maml vmap before']:.2f}, "
          f"{fastest / r['maml vmap after']:.2f}")
    print(f"maml loop / fastest peer               {r['maml loop'] / fastest:.2f}")

# 2. One FO-B-MAML step's gradient evaluations (support and query, per task) under vmap
#    versus one plain pass over the same 720 examples (the floor's unit).
loss = classification_loss(work.model)
theta = detached(dict(work.model.named_parameters()))
tasks = work.batch.support[0].shape[0]
per_task = {n: (p + 0.01 * torch.randn(tasks, *p.shape)).clone() for n, p in theta.items()}
grad = torch.func.grad(loss)
both_grads = torch.func.vmap(lambda th, s, q: (grad(th, s), grad(th, q)))
shared_grads = torch.func.vmap(lambda th, s, q: (grad(th, s), grad(th, q)), in_dims=(None, 0, 0))
r = bench({
    "plain pass, 720 examples": lambda: plain_pass(work.model, *inputs["both"]),
    "vmap support+query, per-task θ": lambda: both_grads(per_task, work.batch.support, work.batch.query),
    "vmap support+query, shared θ": lambda: shared_grads(theta, work.batch.support, work.batch.query),
}, reps=3)
base = r["plain pass, 720 examples"]
print("one step's gradients (16 tasks x (15 support + 30 query)):")
for k, v in r.items():
    print(f"  {k:34s} {v * 1e3:7.2f} ms  {v / base:5.2f}x")

# 3. Layer by layer, fwd+bwd of the first block's shapes (16 tasks x 45 examples, 16 ch, L 40).
T, N, C, L = 16, 45, 16, 40
x, w, b = torch.randn(T, N, C, L), torch.randn(T, C, C, 3), torch.randn(T, C)
gamma, beta = torch.ones(T, C), torch.zeros(T, C)


def plain(fn, *args):
    args = [a.detach().requires_grad_() for a in args]
    out = fn(*args)
    torch.autograd.backward(out, torch.ones_like(out), inputs=args)


def vmapped(fn, *args):
    def one(*a):
        out, vjp = torch.func.vjp(fn, *a)
        return vjp(torch.ones_like(out))

    return torch.func.vmap(one)(*args)


def conv(x, w, b):
    return F.conv1d(x, w, b, padding=1)


def norm(x, g, bb):
    return F.batch_norm(x, None, None, g, bb, training=True)


def unfold_conv(x, w, b):
    cols = F.pad(x, (1, 1)).unfold(-1, 3, 1).permute(0, 2, 4, 1, 3).reshape(x.shape[0], C * 3, -1)
    out = torch.bmm(w.reshape(w.shape[0], w.shape[1], -1), cols)
    return out.reshape(x.shape[0], w.shape[1], x.shape[1], x.shape[3]).permute(0, 2, 1, 3) + b[:, None, :, None]


flat = x.reshape(T * N, C, L)
r = bench({
    "conv plain (θ shared)": lambda: plain(conv, flat, w[0], b[0]),
    "conv vmap (grouped, per-task θ)": lambda: vmapped(conv, x, w, b),
    "conv unfold+bmm (per-task θ)": lambda: plain(unfold_conv, x, w, b),
    "batchnorm plain": lambda: plain(norm, flat, gamma[0], beta[0]),
    "batchnorm vmap (per-task stats)": lambda: vmapped(norm, x, gamma, beta),
    "maxpool plain": lambda: plain(lambda t: F.max_pool1d(t, 2), flat),
    "maxpool vmap": lambda: vmapped(lambda t: F.max_pool1d(t, 2), x),
}, reps=5)
print("layers, fwd+bwd:")
for k, v in r.items():
    print(f"  {k:34s} {v * 1e3:7.3f} ms")
print("load average after", os.getloadavg())
