import copy, statistics, torch
from torch import nn
torch.set_num_threads(1)
from fobbench.experiments.speed import build
from fobbench.measure.floor import pass_inputs, plain_pass
from fobbench.measure.timing import time_call
from fobbench.models.conv1d import PairMaxPool1d
from fobbench.problems.mnist1d import MNIST1DProblem
problem = MNIST1DProblem(ways=3, shots=5, queries=10, num_samples=12000)
work = build(problem, 16, 0, "cpu")
new = work.model
old = copy.deepcopy(new)
for i, layer in enumerate(old.features):
    if isinstance(layer, PairMaxPool1d):
        old.features[i] = nn.MaxPool1d(2)
x, y = pass_inputs(work.batch.support, work.batch.query)["both"]
res = {"MaxPool1d": [], "PairMaxPool1d": []}
for r in range(7):
    for name, m in (("MaxPool1d", old), ("PairMaxPool1d", new)):
        res[name].append(time_call(lambda: plain_pass(m, x, y), 0.5).median * 1e3)
for k, v in res.items():
    print(k, "plain pass over 720 examples, median ms", round(statistics.median(v), 2), [round(a, 2) for a in v])
