"""Compiled meta-gradient time with the Conv1D's max-pooling swapped for variants (issue 14).

Usage: python s20_pool_variants.py METHODS VARIANTS [ROUNDS env], e.g. `fomaml max,amax,fix`.
Variants: max (nn.MaxPool1d), amax (reshape + amax: splits a tie's gradient), select / select2
(torch.where with a first-maximum mask), mul (amax + a straight-through tie term), fix (amax +
0.5·where(tie, a − b, 0): fobbench's PairMaxPool1d), window (the model's own pooling layer as
built: in the run logged in s20_pool_variants.txt that was a running-maximum torch.where).
"""
import sys, time, os, copy, statistics, torch
from torch import nn
torch.set_num_threads(1)
from fobbench.estimators import EstimatorConfig, meta_gradient, get
from fobbench.experiments.speed import build
from fobbench.measure.floor import honest_floor
from fobbench.measure.timing import time_call
from fobbench.params import classification_loss, relative_error
from fobbench.problems.mnist1d import MNIST1DProblem

class AmaxPool1d(nn.Module):
    def forward(self, x):
        n = x.shape[-1] // 2
        return x[..., : 2 * n].unflatten(-1, (n, 2)).amax(-1)

class SelectPool1d(nn.Module):
    def forward(self, x):
        k = 2
        n = x.shape[-1] // k
        w = x[..., : k * n].unflatten(-1, (n, k))
        with torch.no_grad():
            m = w.amax(-1, keepdim=True)
            hit = (w == m) | w.isnan()
            first = hit & (hit.cumsum(-1) == 1)
        return torch.where(first, w, 0.0).sum(-1)

class Select2Pool1d(nn.Module):
    def forward(self, x):
        n = x.shape[-1] // 2
        w = x[..., : 2 * n].unflatten(-1, (n, 2))
        with torch.no_grad():
            a, b = w[..., 0], w[..., 1]
            first = (a >= b) | a.isnan()
            mask = torch.stack([first, ~first], -1)
        return torch.where(mask, w, 0.0).sum(-1)

class MulPool1d(nn.Module):
    def forward(self, x):
        n = x.shape[-1] // 2
        w = x[..., : 2 * n].unflatten(-1, (n, 2))
        m = w.amax(-1)
        with torch.no_grad():
            a, b = w[..., 0], w[..., 1]
            tie = (a == b)
            # at a tie amax gives each entry half; route it all to the first
            fix = torch.stack([tie.to(w.dtype), -tie.to(w.dtype)], -1)
        return m + ((w * fix).sum(-1) * 0.5 - ((w * fix).sum(-1) * 0.5).detach())

class FixPool1d(nn.Module):
    def forward(self, x):
        n = x.shape[-1] // 2
        w = x[..., : 2 * n].unflatten(-1, (n, 2))
        a, b = w.unbind(-1)
        with torch.no_grad():
            tie = (a == b) & a.isfinite()
        return w.amax(-1) + 0.5 * torch.where(tie, a - b, 0.0)

methods = sys.argv[1].split(",")
variants = sys.argv[2].split(",")
problem = MNIST1DProblem(ways=3, shots=5, queries=10, num_samples=12000)
work = build(problem, 16, 0, "cpu")
models = {}
for tag in variants:
    m = copy.deepcopy(work.model)
    for i, layer in enumerate(m.features):
        if isinstance(layer, nn.MaxPool1d):
            m.features[i] = {"max": nn.MaxPool1d(2), "amax": AmaxPool1d(), "select": SelectPool1d(), "select2": Select2Pool1d(), "mul": MulPool1d(), "fix": FixPool1d(), "window": layer}[tag]
    models[tag] = m
config = EstimatorConfig()
b = work.batch
calls = {}
for tag, model in models.items():
    loss = classification_loss(model)
    theta = dict(model.named_parameters())
    for method in methods:
        f = (lambda loss=loss, theta=theta, method=method:
             meta_gradient(method, theta, loss, b.support, b.query, config, batching="compiled").grad)
        t0 = time.perf_counter(); f(); print(tag, method, "first call", round(time.perf_counter() - t0, 1), flush=True)
        calls[(tag, method)] = f
res = {k: [] for k in calls}
for r in range(int(os.environ.get("ROUNDS", 5))):
    for k, f in calls.items():
        res[k].append(time_call(f, 0.5).median)
for k, v in res.items():
    print(k, "median ms", round(statistics.median(v) * 1e3, 1), [round(x * 1e3, 1) for x in v])
