import copy, statistics, torch, time
from torch import nn
torch.set_num_threads(1)
from fobbench.experiments.speed import build
from fobbench.measure.floor import compiled_floor_calls, pass_inputs, plain_pass
from fobbench.measure.timing import time_call
from fobbench.models.conv1d import PairMaxPool1d
from fobbench.problems.mnist1d import MNIST1DProblem

class AmaxPool1d(nn.Module):
    def forward(self, x):
        n = x.shape[-1] // 2
        return x[..., : 2 * n].unflatten(-1, (n, 2)).amax(-1)

problem = MNIST1DProblem(ways=3, shots=5, queries=10, num_samples=12000)
work = build(problem, 16, 0, "cpu")
models = {"pair": work.model}
for tag, make in (("max", lambda: nn.MaxPool1d(2)), ("amax", AmaxPool1d)):
    m = copy.deepcopy(work.model)
    for i, layer in enumerate(m.features):
        if isinstance(layer, PairMaxPool1d):
            m.features[i] = make()
    models[tag] = m
calls = {}
for tag, m in models.items():
    c = compiled_floor_calls(m, work.batch.support, work.batch.query)["support"]
    t0 = time.perf_counter(); c(); print(tag, "compile", round(time.perf_counter() - t0, 1), flush=True)
    calls[tag] = c
x, y = pass_inputs(work.batch.support, work.batch.query)["support"]
calls["eager max"] = lambda: plain_pass(models["max"], x, y)
res = {k: [] for k in calls}
for r in range(5):
    for k, c in calls.items():
        res[k].append(time_call(c, 0.3).median * 1e3)
for k, v in res.items():
    print(k, "support pass (240 examples) median ms", round(statistics.median(v), 2), [round(a, 2) for a in v])
