"""fobbench: benchmarks for first-order meta-learning (FO-B-MAML and its peers).

The estimator core (:mod:`fobbench.estimators`, :mod:`fobbench.inner`) works on any
``nn.Module`` through ``torch.func``; the commands under :mod:`fobbench.cli` run the
paper's experiments and write versioned CSV results (:mod:`fobbench.results`).
"""

__version__ = "0.1.0"
