"""Associative recall (chapter 11): ideal memories on MQAR, training models on MQAR, and the figures.

Symbols -> code:  N (key size of a memory: Mamba-2's d_state, DeltaNet's K) -> N,
P (value size: Mamba-2's head dim, DeltaNet's V) -> P,  the number of key-value
pairs -> kv,  β (the delta rule's write strength) -> beta,  S (the N x P
state) -> the state of ``ssd`` / ``delta_rule``.

An *ideal* memory is one layer whose projections are given, not learned:
every token gets a fixed random unit key vector in R^N and a fixed random unit
value vector in R^P. On an MQAR sequence (``ssm_edu.tasks.mqar``) the layer
writes, at each value position, the pair (key of the previous token, value of
this token), and reads, at every position, with the current token's key as
the query. The answer is the value token whose vector is closest (largest dot
product) to what it read. Three memories:

* ``"additive"``: Mamba-2's update with no decay and Δ = 1 at the writes
  (Δ = 0 elsewhere), S <- S + k vᵀ, read Sᵀq; computed with ``ssd``.
  Linear attention is the same memory.
* ``"delta"``: the delta rule with write strength β, computed with
  ``delta_rule``.
* ``"attention"``: a softmax over every written key (a KV cache of all the
  pairs, nearly a hard lookup: the scores are scaled by 1000).

The first two keep N·P numbers, whatever kv; the third keeps kv·(N + P).
``recall_grid`` measures the accuracy over a grid of N and kv; the chapter's
heat maps and explorer draw it. ``train_mqar`` trains an ``ssm_edu.lm`` model on
a mixture of kv and returns its accuracy for each kv.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .delta import delta_rule
from .lm import evaluate, train
from .ssd import ssd
from .tasks import IGNORE_INDEX, mqar, task_batches

__all__ = ["MEMORIES", "ideal_recall", "recall_grid", "draw_recall_grid", "recall_figure", "recall_explorer",
           "train_mqar", "mqar_test_sets", "draw_accuracy_by_kv"]

MEMORIES = ("additive", "delta", "attention")


def ideal_recall(memory: str, N: int, kv: int, P: int = 32, vocab: int = 256, n: int = 64, beta: float = 1.0,
                 seed: int = 0) -> float:
    """Accuracy of an ideal one-layer memory (module docstring) on n MQAR sequences of kv pairs.

    The sequences have the shortest MQAR length, L = 4·kv (the memories do
    not decay, so the distance to the queries does not matter). float64.
    """
    if memory not in MEMORIES:
        raise ValueError(f"ideal_recall: memory must be one of {MEMORIES}; got {memory!r}")
    g = torch.Generator().manual_seed(seed)
    L = 4 * kv
    x, y = mqar(n, L=L, kv=kv, vocab=vocab, gen=g)  # (n, L)
    keys = F.normalize(torch.randn(vocab, N, generator=g, dtype=torch.float64), dim=-1)  # (vocab, N)
    values = F.normalize(torch.randn(vocab, P, generator=g, dtype=torch.float64), dim=-1)  # (vocab, P)
    write = torch.zeros(n, L, dtype=torch.float64)
    write[:, 1:2 * kv:2] = 1.0  # the value positions: write (key of x_{t-1}, value of x_t)
    k = keys[torch.roll(x, 1, dims=1)] * write[..., None]  # (n, L, N)
    v, q = values[x], keys[x]  # (n, L, P), (n, L, N)
    if memory == "additive":  # ssd with A = 0 (no decay) and Δ = write: h_t = h_{t-1} + Δ_t v_t k_tᵀ
        out = ssd(v[:, :, None], write[:, :, None], torch.zeros(1, dtype=torch.float64), k[:, :, None],
                  q[:, :, None], impl="vectorized")[:, :, 0]
    elif memory == "delta":
        out = delta_rule(q[:, :, None], k[:, :, None], v[:, :, None], beta * write[:, :, None], scale=1.0)[:, :, 0]
    else:
        scores = 1000.0 * torch.einsum("btn,bsn->bts", q, k)  # (n, L, L)
        seen = (write[:, None, :] > 0) & torch.ones(L, L, dtype=torch.bool).tril()  # written at or before t
        out = torch.softmax(scores.masked_fill(~seen, -math.inf), dim=-1).nan_to_num() @ v  # (n, L, P)
    half = vocab // 2
    answer = (out @ values[half:].T).argmax(-1) + half  # (n, L): the closest value token
    asked = y != IGNORE_INDEX
    return (answer[asked] == y[asked]).double().mean().item()


def recall_grid(memory: str, Ns, kvs, **kwargs) -> torch.Tensor:
    """``ideal_recall`` for every N (rows) and kv (columns): (len(Ns), len(kvs)) float64."""
    return torch.tensor([[ideal_recall(memory, N, kv, **kwargs) for kv in kvs] for N in Ns], dtype=torch.float64)


def draw_recall_grid(ax, acc, Ns, kvs, title: str = "", colorbar: bool = True):
    """Heat map of recall accuracy: state key size N down, key-value pairs across, the value in each cell."""
    acc = torch.as_tensor(acc).double()
    ax.clear()
    im = ax.imshow(acc.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto", origin="lower")
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            ax.text(j, i, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if acc[i, j] > 0.6 else "white")
    ax.set_xticks(range(len(kvs)), [str(k) for k in kvs])
    ax.set_yticks(range(len(Ns)), [str(n) for n in Ns])
    ax.set_xlabel("key-value pairs kv")
    ax.set_ylabel("key size N")
    ax.set_title(title)
    ax.grid(False)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="recall accuracy")
    return im


def recall_figure(P: int = 32, beta: float = 1.0, Ns=(1, 2, 4, 8, 16, 32), kvs=(1, 2, 4, 8, 16, 32), n: int = 32,
                  axes=None):
    """The three ideal memories side by side (``recall_grid``), for value size P and write strength β."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    titles = {"additive": "additive (Mamba-2, linear attn.)\nstate N·P", "delta": f"delta rule, β = {beta:.2f}\nstate N·P",
              "attention": "softmax attention\nKV cache kv·(N + P)"}
    for ax, memory in zip(axes, MEMORIES):
        acc = recall_grid(memory, Ns, kvs, P=P, n=n, beta=beta)
        draw_recall_grid(ax, acc, Ns, kvs, f"{titles[memory]}, P = {P}", colorbar=memory == "attention")
    return axes


def recall_explorer(P: int = 32, beta: float = 1.0):
    """Chapter 11: the value size P and the delta rule's β; watch which memories recall which kv."""
    import ipywidgets as W

    from .widgets import _explorer, _slider

    return _explorer(lambda p, b: recall_figure(P=p, beta=b),
                     _slider(W.IntSlider, P, 4, 64, 4, "value size P"),
                     _slider(W.FloatSlider, beta, 0.1, 1.0, 0.05, "delta rule β"))


# ----------------------------------------------------------------------------
# Training on MQAR
# ----------------------------------------------------------------------------


def mqar_test_sets(kvs, n: int = 256, seed: int = 1000, **settings) -> dict:
    """One fixed test set per kv: ``{kv: (x, y)}`` (``settings``: L, vocab, ... of ``mqar``)."""
    return {kv: mqar(n, kv=kv, gen=seed + kv, **settings) for kv in kvs}


def train_mqar(model, steps: int, kvs, *, batch: int = 32, lr: float = 1e-2, seed: int = 1, tests=None,
               **settings) -> tuple[dict, object]:
    """Train ``model`` on MQAR with kv drawn from ``kvs`` for each example; return ({kv: accuracy}, History).

    ``settings`` (L, vocab, ...) go to ``mqar``; ``tests`` are the test sets
    (default ``mqar_test_sets(kvs, **settings)``). The model's device is used.
    """
    device = next(model.parameters()).device
    tests = mqar_test_sets(kvs, **settings) if tests is None else tests
    history = train(model, task_batches("mqar", batch, seed=seed, device=device, kv=list(kvs), **settings), steps,
                    lr=lr, progress=False)
    return {kv: evaluate(model, x, y)["accuracy"] for kv, (x, y) in tests.items()}, history


def draw_accuracy_by_kv(ax, results: dict, title: str = ""):
    """Accuracy against the number of pairs, one line per model: ``results`` maps a label to {kv: accuracy}."""
    from . import plots

    every = sorted({kv for acc in results.values() for kv in acc})
    ax.plot(every, [1 / kv for kv in every], ":", color="0.5", label="1/kv: one of the values, at random")
    for i, (label, acc) in enumerate(results.items()):
        kvs = sorted(acc)
        ax.plot(kvs, [acc[k] for k in kvs], "o-", label=label, color=plots.PALETTE[i % len(plots.PALETTE)])
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("key-value pairs kv (log scale)")
    ax.set_ylabel("recall accuracy at the queries")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax
