"""max_pool vs amax pooling: meta-gradients over many MNIST-1D meta-batches, float64 and float32."""
import copy, torch
from torch import nn
torch.set_num_threads(1)
from fobbench.estimators import EstimatorConfig, meta_gradient
from fobbench.params import classification_loss, relative_error
from fobbench.problems.mnist1d import MNIST1DProblem
from fobbench.models.conv1d import PairMaxPool1d, pair_max


class PairMax(nn.Module):
    def forward(self, x):
        return pair_max(x)

problem = MNIST1DProblem(ways=3, shots=5, queries=10, num_samples=12000)
torch.manual_seed(0)
new = problem.model()
old = copy.deepcopy(new)
for i, layer in enumerate(old.features):
    if isinstance(layer, PairMaxPool1d):
        old.features[i] = nn.MaxPool1d(2)
        new.features[i] = PairMax()  # pair_max eagerly too (the model uses it only compiled under vmap)
print(old.features[3], new.features[3])
config = EstimatorConfig()
g = torch.Generator().manual_seed(1)
for dtype in (torch.float64, torch.float32):
    a, b = copy.deepcopy(old).to(dtype), copy.deepcopy(new).to(dtype)
    la, lb = classification_loss(a), classification_loss(b)
    ta, tb = dict(a.named_parameters()), dict(b.named_parameters())
    errs, ties = [], 0
    for _ in range(30):
        batch = problem.sample("train", 16, g)
        cast = lambda d: tuple(t.to(dtype) if t.is_floating_point() else t for t in d)
        s, q = cast(batch.support), cast(batch.query)
        x = s[0]
        ties += int((x[..., 1:] == x[..., :-1]).sum())
        ga = meta_gradient("fomaml", ta, la, s, q, config, batching="vmap").grad
        gb = meta_gradient("fomaml", tb, lb, s, q, config, batching="vmap").grad
        errs.append(relative_error(gb, ga))
    print(dtype, "max rel diff", max(errs), "batches differing", sum(e > 0 for e in errs), "of", len(errs), "equal adjacent inputs", ties)
