"""Adapters to the peer meta-learning libraries (``fobbench speed --peers``).

Each adapter runs a peer library's own MAML (and, where it has one, first-order MAML) through
its public API on fobbench's model, θ and tasks, with fobbench's inner problem: K steps of
plain gradient descent on f̂(φ) + λ/2‖φ − θ‖² from φ₀ = θ, tasks one at a time (the way the
peers' examples run). ``fobbench speed`` checks each peer's meta-gradient against fobbench's
(in float64) before timing it and records the agreement in every row.

A peer that cannot be imported (not installed; learn2learn does not build on Python 3.11) is
skipped with a one-line note from :func:`unavailable`. Install them with
``pip install 'fobbench[peers]'``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from fobbench.errors import FobbenchError
from fobbench.inner import InnerConfig
from fobbench.params import Data, Params

PeerFn = Callable[[str, nn.Module, Data, Data, InnerConfig], Params]
"""``fn(method, model, support, query, inner) -> meta-gradient`` averaged over the tasks, by
parameter name (``model``'s parameters are θ; the model is left as it was)."""


@dataclass(frozen=True)
class Peer:
    """A peer library and what fobbench can run of it.

    Attributes:
        name: ``higher``, ``torchopt`` or ``learn2learn``.
        module: the package imported to check availability.
        methods: fobbench method names it implements (``maml``, ``fomaml``).
        adapter: the fobbench module holding ``meta_gradient`` (a :data:`PeerFn`).
    """

    name: str
    module: str
    methods: tuple[str, ...]
    adapter: str

    def meta_gradient_fn(self) -> PeerFn:
        """The adapter's ``meta_gradient`` (imports the peer library)."""
        return importlib.import_module(self.adapter).meta_gradient  # type: ignore[no-any-return]


PEERS: dict[str, Peer] = {
    "higher": Peer("higher", "higher", ("maml", "fomaml"), "fobbench.peers.higher"),
    "torchopt": Peer("torchopt", "torchopt", ("maml", "fomaml"), "fobbench.peers.torchopt"),
    "learn2learn": Peer("learn2learn", "learn2learn", ("maml", "fomaml"), "fobbench.peers.learn2learn"),
}


def parse_peers(text: str | None) -> list[Peer]:
    """``--peers higher,torchopt,learn2learn`` (or ``all``) as peers; unknown names refused."""
    if not text:
        return []
    chosen = list(PEERS) if text.strip() == "all" else [p.strip() for p in text.split(",") if p.strip()]
    for name in chosen:
        if name not in PEERS:
            raise FobbenchError(f"--peers: unknown peer '{name}' (choose from {', '.join(PEERS)})")
    return [PEERS[name] for name in dict.fromkeys(chosen)]


def unavailable(peer: Peer) -> str | None:
    """None when the peer library imports; else a one-line note why it is skipped."""
    try:
        importlib.import_module(peer.module)
    except Exception as error:  # noqa: BLE001 (any import failure means: skip this peer)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return (f"{peer.name} skipped: not importable ({first}); "
                f"`pip install 'fobbench[peers]'` installs the peers that build on this Python")
    return None


def check_inner(peer: Peer, inner: InnerConfig) -> str | None:
    """None when the peer can run this inner solver; else why not (peers run plain gd)."""
    if inner.optimizer != "gd":
        return f"{peer.name} skipped: its adapter runs the gd inner optimizer only (got {inner.optimizer})"
    return None


def split(model: nn.Module) -> tuple[list[str], list]:
    """Parameter names and tensors of ``model`` (θ), in registration order."""
    named = list(model.named_parameters())
    return [n for n, _ in named], [p for _, p in named]


def proximal(params, theta, lam: float):  # noqa: ANN001, ANN201 (tensors of any peer's kind)
    """λ/2‖φ − θ‖² over matching parameter lists."""
    return 0.5 * lam * sum(((p - t) ** 2).sum() for p, t in zip(params, theta, strict=True))
