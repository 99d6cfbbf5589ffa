"""A small sequence model, its training loop, evaluation and generation (chapters 7-11).

One model serves every chapter of Part III: token embedding, ``n_layers``
residual pre-norm blocks, a final norm and a head tied to the embedding.
Only the block changes (Mamba in chapter 7, Mamba-2 in 8, Mamba-3 in 9, an
LTI S4D layer as the baseline), so a chapter passes a *block factory*:

    model = SequenceModel(vocab_size, d_model, n_layers, block=lambda d: Mamba(d))

    x  (b, L) int64 ──embed──> h (b, L, d)
    for each layer:   h = h + block(RMSNorm(h))
    logits = head(RMSNorm(h))  (b, L, vocab)

The block protocol
------------------
A block is an ``nn.Module`` made by ``block(d_model)``, with

    forward(x)              x (b, L, d_model) -> (b, L, d_model), causal:
                            output t depends on inputs 0 .. t only.

and, to generate through the recurrence (``generate(..., recurrent=True)``):

    allocate_cache(batch, device=None, dtype=None) -> cache
                            the block's recurrent state for ``batch``
                            sequences at position -1 (before any token):
                            any object, typically a dict of tensors
                            (Mamba: the conv window and the SSM state).
    step(x_t, cache)        x_t (b, d_model) -> y_t (b, d_model); reads and
                            updates ``cache`` in place.

and, optionally,

    extend(x, cache)        x (b, l, d_model) -> (b, l, d_model): a chunk of
                            l tokens after the positions ``cache`` holds,
                            through the block's parallel form (prefill and
                            streaming, chapter 10); updates ``cache``.

The contract, tested for every block: feeding x[:, 0], x[:, 1], ... through
``step`` from a fresh cache returns forward(x)[:, 0], forward(x)[:, 1], ...,
and ``extend`` over any chunks returns the same rows. ``step`` updates the
cache's tensors in place (it never replaces them): a CUDA graph of the step
(``ssm_edu.inference.Decoder``) replays reads and writes of fixed addresses.
A block without ``extend`` is extended by its ``step``, token by token.
A block without ``step`` (the S4D baseline, which convolves) still trains
and still generates with ``recurrent=False`` (re-running the whole prefix).

Parameters that must not be weight-decayed (Mamba's A_log and D) carry the
attribute ``_no_weight_decay = True``; biases whose initialisation matters
(Mamba's dt bias) carry ``_no_reinit = True``. The model's initialisation is
mamba_ssm's: embeddings N(0, 0.02²), linear biases zero, and every
``out_proj.weight`` (the projection that writes into the residual stream)
scaled down by sqrt(n_layers) so that the stream does not grow with depth.

Training (``train``): AdamW on mini-batches from a ``get_batch()``
callable, linear warm-up then cosine decay, gradient clipping,
cross-entropy with ``ignore_index=IGNORE_INDEX`` (so the synthetic tasks of
``ssm_edu.tasks`` and next-character prediction use the same loss); it
returns a ``History`` of losses and step times. ``evaluate`` gives loss and
accuracy at the answer positions; ``generate`` samples.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tasks import IGNORE_INDEX

__all__ = [
    "SequenceModel",
    "Transposed",
    "s4d_block",
    "History",
    "train",
    "evaluate",
    "generate",
    "count_parameters",
    "extend_block",
]


class Transposed(nn.Module):
    """Wrap a channels-first layer (b, H, L) -> (b, H, L) as a block (b, L, H) -> (b, L, H).

    The LTI layers of chapters 5-6 (``S4Layer``, ``S4D``) are channels-first
    and convolve; they have no ``step``.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.mT).mT  # (b, L, H)


def s4d_block(d_model: int, d_state: int = 64, init: str = "legs", dt_min: float = 1e-3, dt_max: float = 1e-1):
    """Chapter 6's S4D layer (an LTI convolution, GELU, GLU) as a block: the baseline of chapter 7."""
    from .diagonal import S4D

    return Transposed(S4D(d_model, N=d_state, init=init, dt_min=dt_min, dt_max=dt_max))


class SequenceModel(nn.Module):
    """Embedding, ``n_layers`` residual pre-norm blocks, final norm, tied head (see the module docstring).

    Args:
        vocab_size: number of tokens.
        d_model: width of the residual stream.
        n_layers: number of blocks.
        block: the block factory, ``block(d_model) -> nn.Module``.
    forward: idx (b, L) int64 -> logits (b, L, vocab_size).
    """

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, block: Callable[[int], nn.Module]):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList([block(d_model) for _ in range(n_layers)])
        self.norms = nn.ModuleList([nn.RMSNorm(d_model) for _ in range(n_layers)])
        self.norm_f = nn.RMSNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.embedding.weight  # tied: one matrix reads and writes tokens
        self._init_weights(n_layers)

    def _init_weights(self, n_layers: int) -> None:
        for name, module in self.named_modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", False):
                nn.init.zeros_(module.bias)
            if name.endswith("out_proj") and isinstance(module, nn.Linear):
                # pre-norm residual streams add n_layers updates: keep their sum's scale near 1
                with torch.no_grad():
                    module.weight /= math.sqrt(n_layers)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embedding(idx)  # (b, L, d)
        for norm, block in zip(self.norms, self.blocks):
            h = h + block(norm(h))
        return self.head(self.norm_f(h))  # (b, L, vocab)

    def allocate_cache(self, batch: int) -> list:
        """One cache per block, at position -1 (see the block protocol)."""
        w = self.embedding.weight
        caches = []
        for block in self.blocks:
            if not hasattr(block, "step"):
                raise NotImplementedError(f"{type(block).__name__} has no step(): it cannot run as a recurrence; "
                                          "generate with recurrent=False")
            caches.append(block.allocate_cache(batch, device=w.device, dtype=w.dtype))
        return caches

    def step(self, token: torch.Tensor, caches: list) -> torch.Tensor:
        """One token per sequence through the recurrence: token (b,) int64 -> logits (b, vocab)."""
        h = self.embedding(token)  # (b, d)
        for norm, block, cache in zip(self.norms, self.blocks, caches):
            h = h + block.step(norm(h), cache)
        return self.head(self.norm_f(h))

    def extend(self, idx: torch.Tensor, caches: list) -> torch.Tensor:
        """Tokens idx (b, l) after those in ``caches`` -> logits (b, l, vocab); ``caches`` move to the chunk's end."""
        h = self.embedding(idx)  # (b, l, d)
        for norm, block, cache in zip(self.norms, self.blocks, caches):
            h = h + extend_block(block, norm(h), cache)
        return self.head(self.norm_f(h))


def extend_block(block: nn.Module, u: torch.Tensor, cache) -> torch.Tensor:
    """A chunk u (b, l, d_model) through ``block`` after the positions ``cache`` holds; updates ``cache``.

    The block's own ``extend`` (its parallel form) where it has one, else its
    ``step`` token by token (the recurrence itself).
    """
    if hasattr(block, "extend"):
        return block.extend(u, cache)
    if hasattr(block, "step"):
        return torch.stack([block.step(u[:, t], cache) for t in range(u.shape[1])], dim=1)
    raise NotImplementedError(f"{type(block).__name__} has neither extend nor step: it cannot carry a state")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------


@dataclass
class History:
    """What ``train`` records: the loss and wall time of every step, and periodic evaluations."""

    loss: list[float] = field(default_factory=list)
    step_time: list[float] = field(default_factory=list)  # seconds per optimiser step
    evals: list[tuple[int, dict]] = field(default_factory=list)  # (step, evaluate(...) result)

    @property
    def mean_step_time(self) -> float:
        """Median seconds per step, skipping the first (warm-up, allocation)."""
        times = sorted(self.step_time[1:] or self.step_time)
        return times[len(times) // 2] if times else float("nan")

    def smoothed(self, window: int = 20) -> list[float]:
        """Running mean of the loss over the last ``window`` steps (for plots)."""
        out, total = [], 0.0
        for i, v in enumerate(self.loss):
            total += v - (self.loss[i - window] if i >= window else 0.0)
            out.append(total / min(i + 1, window))
        return out


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE_INDEX)


def _param_groups(model: nn.Module, weight_decay: float):
    """Decay matrices only: not biases, norms, embeddings' 1-d kin, nor parameters marked _no_weight_decay."""
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (no_decay if p.dim() < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(model: nn.Module, get_batch: Callable[[], tuple], steps: int, *, lr: float = 3e-3,
          weight_decay: float = 0.1, warmup: int | None = None, min_lr_ratio: float = 0.1, grad_clip: float = 1.0,
          eval_every: int | None = None, eval_fn: Callable[[nn.Module], dict] | None = None,
          progress: bool = True, desc: str = "train") -> History:
    """Train ``model`` for ``steps`` AdamW steps; return the ``History``.

    ``get_batch()`` returns (x, y): x (b, L) int64 tokens and y (b, L) int64
    targets (IGNORE_INDEX where nothing is asked). The learning rate rises
    linearly for ``warmup`` steps (default: 10% of ``steps``) and then follows a
    cosine down to ``min_lr_ratio * lr``. Every ``eval_every`` steps (and at the
    end) ``eval_fn(model)`` is called and its dict stored in ``History.evals``.
    ``progress`` shows a tqdm bar with the running loss.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    warmup = max(1, steps // 10) if warmup is None else warmup
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95))

    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    history = History()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    model.train()
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        x, y = get_batch()
        t0 = time.perf_counter()
        loss = _loss(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        _sync(device)
        history.step_time.append(time.perf_counter() - t0)
        history.loss.append(loss.item())
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{history.smoothed(10)[-1]:.3f}")
        if eval_fn is not None and ((eval_every and (step + 1) % eval_every == 0) or step == steps - 1):
            history.evals.append((step + 1, eval_fn(model)))
            model.train()
    bar.close()
    model.eval()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict:
    """Loss and accuracy at the answer positions (y != IGNORE_INDEX).

    x, y (n, L) int64. Returns ``{"loss", "accuracy", "sequence_accuracy"}``:
    mean cross-entropy and the fraction of answer positions where the argmax
    is right, and the fraction of sequences with every answer right.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, right, asked, seq_right = 0.0, 0, 0, 0
    for s in range(0, len(x), batch_size):
        xb, yb = x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)
        logits = model(xb)  # (b, L, vocab)
        mask = yb != IGNORE_INDEX  # (b, L)
        n_asked = int(mask.sum())
        loss_sum += _loss(logits, yb).item() * n_asked
        hit = (logits.argmax(-1) == yb) & mask
        right += int(hit.sum())
        asked += n_asked
        seq_right += int((hit.sum(-1) == mask.sum(-1)).sum())
    model.train(was_training)
    return {"loss": loss_sum / max(asked, 1), "accuracy": right / max(asked, 1), "sequence_accuracy": seq_right / len(x)}


# ----------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None, gen) -> torch.Tensor:
    """logits (b, vocab) -> next token (b,). temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (b, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


@torch.no_grad()
def generate(model: SequenceModel, prompt: torch.Tensor, n_new: int, *, temperature: float = 1.0,
             top_k: int | None = None, gen=None, recurrent: bool = True) -> torch.Tensor:
    """Continue ``prompt`` (b, T) int64 by ``n_new`` sampled tokens; returns (b, T + n_new).

    ``recurrent=True`` runs the model as a recurrence: every prompt token, then
    every sampled token, goes through ``model.step`` once, with a constant-size
    cache (O(1) work and memory per token). ``recurrent=False`` re-runs
    ``forward`` on the whole sequence for every new token (O(T) per token): the
    oracle the recurrence must match. ``temperature=0`` is greedy; ``gen`` (a
    torch.Generator or an int seed, on the CPU) makes sampling reproducible.
    """
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"generate: prompt must have shape (b, T) with T >= 1; got {tuple(prompt.shape)}")
    if isinstance(gen, int):
        gen = torch.Generator().manual_seed(gen)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seq = prompt.to(device)
    if recurrent:
        caches = model.allocate_cache(seq.shape[0])
        for t in range(seq.shape[1]):
            logits = model.step(seq[:, t], caches)  # (b, vocab)
        for _ in range(n_new):
            token = _sample(logits, temperature, top_k, gen)
            seq = torch.cat([seq, token[:, None]], dim=1)
            logits = model.step(token, caches)
    else:
        for _ in range(n_new):
            token = _sample(model(seq)[:, -1], temperature, top_k, gen)
            seq = torch.cat([seq, token[:, None]], dim=1)
    model.train(was_training)
    return seq
