"""A small causal Transformer block with a KV cache (chapter 10's baseline; chapter 11's hybrids).

Symbols -> code:  D (model width) -> d_model,  H (heads) -> n_heads,
P (head width) -> head_dim,  q_t, k_t, v_t -> q, k, v,  t (position) ->
pos,  θ_i = base^(-2i/P) (rotary frequencies) -> inv_freq,  the KV cache
(every k_s, v_s for s <= t) -> cache["k"], cache["v"].
Shapes: b batch, L length.

    q, k, v = qkv_proj(u)                    (b, L, H, P) each
    q, k    = RoPE(q, t), RoPE(k, t)         rotate pairs of channels by t·θ_i
    o       = softmax(q kᵀ / √P + causal mask) v    (b, H, L, P)
    out     = out_proj(o)                    (b, L, D)

Positions are rotary (Su et al. 2024, RoFormer): ``SequenceModel`` has no position
embedding, and rotating q and k by angles proportional to t makes q_t·k_s
depend on t - s only. The forward pass is one call of
``torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)``
(flash / memory-efficient kernels on a GPU).

Decoding (``step``) is attention's recurrence: the "state" is the KV cache,
every rotated key and every value seen so far, (b, H, t+1, P) each. It
grows by one row per token, so the memory per layer is 2·H·P·t numbers and
the work per token is O(t): the opposite of an SSM's constant-size state.
The cache is a dict ``{"k", "v": (b, H, capacity, P), "length": int}``;
its capacity doubles when full (amortised O(1) copies per token), and only
``[:, :, :length]`` is used. ``kv_cache_bytes(cache)`` counts the used part.
``extend(u, cache)`` runs a whole chunk after the cached positions (with a
fresh cache: prefill through SDPA, keeping the keys and values; chunk after
chunk: streaming); chapter 10 uses it.

A *static* cache (``allocate_cache(..., static=True)``) is the same memory
laid out for a CUDA graph (chapter 10, ``ssm_edu.inference.Decoder``): a
fixed capacity that never grows, the position as a tensor on the device
(``"pos"`` (1,) int64) and a mask of the positions written (``"seen"``
(capacity,) bool), so that a captured step reads and advances them without
asking the host. Its step writes k_t, v_t at ``pos`` and attends over the
whole capacity with the mask: every shape is the same at every token. All
zeros is a fresh static cache.

``CausalSelfAttention`` is a token mixer only. ``SequenceModel``'s layer is
``h + block(RMSNorm(h))``, one normed input per layer, so a Transformer layer
is written as a *parallel* block (GPT-J, PaLM): ``block(u) = attn(u) + mlp(u)``
(``TransformerBlock``, ``transformer_block``). A stack that alternates
attention and MLP sub-layers, as in the original Transformer, is
``SequenceModel(..., 2 * n_layers, block=alternate(attention_block(...), mlp_block()))``.
All of ``CausalSelfAttention``, ``MLP`` and ``TransformerBlock`` follow
``ssm_edu.lm``'s block protocol (forward, allocate_cache, step).
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import Shapes

__all__ = [
    "CausalSelfAttention",
    "MLP",
    "TransformerBlock",
    "attention_block",
    "mlp_block",
    "transformer_block",
    "alternate",
    "rope",
    "kv_cache_bytes",
]


def rope(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding: rotate channel pairs (i, i + P/2) of x by angle pos·θ_i.

    x (..., L, P) with P even; pos (L,) positions (integers, any dtype).
    θ_i = base^(-2i/P), i = 0 .. P/2 - 1 (the "rotate half" layout of GPT-NeoX / LLaMA).
    Returns a tensor like x. The rotation preserves norms, and
    rope(q, t)·rope(k, s) depends on t - s only.
    """
    P = x.shape[-1]
    if P % 2:
        raise ValueError(f"rope: the last dimension of x must be even; got shape {tuple(x.shape)}")
    wdtype = torch.promote_types(x.dtype, torch.float32)
    inv_freq = base ** (-torch.arange(0, P // 2, device=x.device, dtype=wdtype) * 2 / P)  # (P/2,)
    angle = pos.to(device=x.device, dtype=wdtype)[:, None] * inv_freq  # (L, P/2)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.to(wdtype).chunk(2, dim=-1)  # (..., L, P/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def kv_cache_bytes(cache: dict) -> int:
    """Bytes of the used part of a KV cache: 2 · b · H · length · P · element size."""
    k, n = cache["k"], _length(cache)
    return 2 * k.shape[0] * k.shape[1] * n * k.shape[3] * k.element_size()


def _length(cache: dict) -> int:
    """Positions a KV cache holds (a static cache keeps them on the device: this reads them, outside any graph)."""
    return cache["length"] if "length" in cache else int(cache["pos"])


def _attend_masked(q, k, v, seen):
    """One query over a fixed-size cache: q (b, H, 1, P), k, v (b, H, S, P), seen (S,) bool -> (b, H, 1, P).

    softmax(q kᵀ / √P) v over the positions marked in ``seen``, written as
    two matrix products (each reads the cache once) and a masked softmax in
    float32 at least: no shape depends on how many positions are in use.
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.mT  # (b, H, 1, S)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    scores = scores.masked_fill(~seen, float("-inf"))
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with rotary positions: (b, L, d_model) -> (b, L, d_model).

    Args:
        d_model: width of the residual stream.
        n_heads: H; head_dim defaults to d_model // n_heads and must be even (RoPE).
        head_dim: P, width of one head.
        rope_base: base of the rotary frequencies.
        bias: biases in the projections.
        capacity: initial number of positions the cache holds (it grows by doubling).
    """

    def __init__(self, d_model: int, n_heads: int = 4, head_dim: int | None = None, rope_base: float = 10000.0,
                 bias: bool = False, capacity: int = 64):
        super().__init__()
        head_dim = d_model // n_heads if head_dim is None else head_dim
        if head_dim < 2 or head_dim % 2:
            raise ValueError(f"CausalSelfAttention: head_dim must be even and >= 2 (rotary pairs); got {head_dim} "
                             f"(d_model={d_model}, n_heads={n_heads})")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, head_dim
        self.rope_base, self.capacity = rope_base, capacity
        self.qkv_proj = nn.Linear(d_model, 3 * n_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)

    def _qkv(self, u: torch.Tensor, pos: torch.Tensor):
        """u (b, L, d_model), pos (L,) -> rotated q, rotated k, v, each (b, H, L, P)."""
        b, L, _ = u.shape
        q, k, v = self.qkv_proj(u).view(b, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (b, H, L, P)
        return rope(q, pos, self.rope_base), rope(k, pos, self.rope_base), v

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        Shapes("CausalSelfAttention").check("u", u, f"b L {self.d_model}")
        b, L, _ = u.shape
        q, k, v = self._qkv(u, torch.arange(L, device=u.device))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (b, H, L, P)
        return self.out_proj(o.transpose(1, 2).reshape(b, L, -1))

    def extend(self, u: torch.Tensor, cache: dict) -> torch.Tensor:
        """A chunk of tokens after those in ``cache``: u (b, l, d_model) -> (b, l, d_model); appends l positions.

        With a fresh cache this is ``forward`` that also keeps the keys and
        values (prefill); after T cached positions, query i (position T + i)
        attends to positions 0 .. T + i. Chunk after chunk, it reproduces
        ``forward`` on the whole sequence (streaming), and with l = 1 it is ``step``.
        """
        Shapes("CausalSelfAttention.extend").check("u", u, f"{cache['k'].shape[0]} l {self.d_model}")
        b, l, _ = u.shape
        T = _length(cache)
        pos = torch.arange(T, T + l, device=u.device)  # (l,) absolute positions of the chunk
        q, k, v = self._qkv(u, pos)  # (b, H, l, P)
        if "pos" in cache:  # static: a fixed capacity
            if T + l > cache["k"].shape[2]:
                raise ValueError(f"CausalSelfAttention.extend: a static cache of capacity {cache['k'].shape[2]} "
                                 f"holds {T} positions and cannot take {l} more")
            cache["seen"][T:T + l] = True
            cache["pos"].fill_(T + l)
        else:
            self._reserve(cache, T + l)
            cache["length"] = T + l
        cache["k"][:, :, T:T + l] = k
        cache["v"][:, :, T:T + l] = v
        if T == 0:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (b, H, l, P)
        else:  # is_causal aligns the mask top-left; here query i sees keys 0 .. T + i
            mask = torch.arange(T + l, device=u.device)[None, :] <= pos[:, None]  # (l, T + l)
            o = F.scaled_dot_product_attention(q, cache["k"][:, :, :T + l], cache["v"][:, :, :T + l], attn_mask=mask)
        return self.out_proj(o.transpose(1, 2).reshape(b, l, -1))

    def allocate_cache(self, batch: int, device=None, dtype=None, capacity: int | None = None,
                       static: bool = False) -> dict:
        """A fresh, empty KV cache with room for ``capacity`` positions (it grows when full).

        ``static=True``: a cache of exactly ``capacity`` positions that never
        grows, for CUDA graphs (module docstring): {"k", "v", "pos", "seen"}.
        """
        w = self.qkv_proj.weight
        device = w.device if device is None else device
        dtype = w.dtype if dtype is None else dtype
        capacity = self.capacity if capacity is None else capacity
        shape = (batch, self.n_heads, max(1, capacity), self.head_dim)
        cache = {name: torch.zeros(shape, device=device, dtype=dtype) for name in ("k", "v")}
        if static:
            return cache | {"pos": torch.zeros(1, dtype=torch.long, device=device),
                            "seen": torch.zeros(shape[2], dtype=torch.bool, device=device)}
        return cache | {"length": 0}

    @staticmethod
    def _reserve(cache: dict, n: int) -> None:
        """Make room for n positions, doubling the capacity as needed (copies the used part)."""
        cap = cache["k"].shape[2]
        if n <= cap:
            return
        while cap < n:
            cap *= 2
        for name in ("k", "v"):
            old = cache[name]
            new = old.new_zeros(old.shape[0], old.shape[1], cap, old.shape[3])
            new[:, :, :cache["length"]] = old[:, :, :cache["length"]]
            cache[name] = new

    def step(self, u_t: torch.Tensor, cache: dict) -> torch.Tensor:
        """One token: u_t (b, d_model) -> (b, d_model); appends its key and value to ``cache``."""
        Shapes("CausalSelfAttention.step").check("u_t", u_t, f"{cache['k'].shape[0]} {self.d_model}")
        if "pos" in cache:
            return self._step_static(u_t, cache)
        t = cache["length"]
        q, k, v = self._qkv(u_t[:, None], torch.tensor([t], device=u_t.device))  # (b, H, 1, P)
        self._reserve(cache, t + 1)
        cache["k"][:, :, t] = k[:, :, 0]
        cache["v"][:, :, t] = v[:, :, 0]
        cache["length"] = t + 1
        # one query attends to every cached position: no mask needed
        o = F.scaled_dot_product_attention(q, cache["k"][:, :, :t + 1], cache["v"][:, :, :t + 1])  # (b, H, 1, P)
        return self.out_proj(o.reshape(u_t.shape[0], -1))

    def _step_static(self, u_t: torch.Tensor, cache: dict) -> torch.Tensor:
        """``step`` on a static cache: nothing here reads a value on the host, no shape depends on the position.

        The position ``pos`` (1,) stays on the device; writing past the
        capacity is not checked here (that would need the host): the caller
        (``ssm_edu.inference.Decoder``) counts the positions it has used.
        """
        pos = cache["pos"]  # (1,) int64: this token's position
        q, k, v = self._qkv(u_t[:, None], pos)  # (b, H, 1, P)
        cache["k"].index_copy_(2, pos, k)
        cache["v"].index_copy_(2, pos, v)
        cache["seen"].index_fill_(0, pos, True)
        o = _attend_masked(q, cache["k"], cache["v"], cache["seen"])  # (b, H, 1, P)
        pos.add_(1)
        return self.out_proj(o.reshape(u_t.shape[0], -1))


class MLP(nn.Module):
    """The Transformer's position-wise feed-forward layer: out_proj(GELU(in_proj(u))), hidden width expand·d_model.

    forward: (b, L, d_model) -> (b, L, d_model); step: (b, d_model) -> (b, d_model), no cache (it has no memory).
    """

    def __init__(self, d_model: int, expand: int = 4, bias: bool = False):
        super().__init__()
        self.d_model = d_model
        self.in_proj = nn.Linear(d_model, expand * d_model, bias=bias)
        self.out_proj = nn.Linear(expand * d_model, d_model, bias=bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.out_proj(F.gelu(self.in_proj(u)))

    def allocate_cache(self, batch: int, device=None, dtype=None) -> dict:
        return {}

    def step(self, u_t: torch.Tensor, cache: dict) -> torch.Tensor:
        return self.forward(u_t)

    def extend(self, u: torch.Tensor, cache: dict) -> torch.Tensor:
        return self.forward(u)


class TransformerBlock(nn.Module):
    """A parallel Transformer layer (GPT-J, PaLM): block(u) = attn(u) + mlp(u), with u = RMSNorm(h) from the model.

    Args: d_model, n_heads, head_dim, rope_base as ``CausalSelfAttention``;
    mlp_expand: the MLP's hidden width over d_model (4).
    The cache is the attention's KV cache (the MLP has none).
    """

    def __init__(self, d_model: int, n_heads: int = 4, head_dim: int | None = None, mlp_expand: int = 4,
                 rope_base: float = 10000.0, bias: bool = False):
        super().__init__()
        self.attn = CausalSelfAttention(d_model, n_heads, head_dim, rope_base=rope_base, bias=bias)
        self.mlp = MLP(d_model, mlp_expand, bias=bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.attn(u) + self.mlp(u)

    def extend(self, u: torch.Tensor, cache: dict) -> torch.Tensor:
        """A chunk after the cached positions (prefill, streaming): see ``CausalSelfAttention.extend``."""
        return self.attn.extend(u, cache) + self.mlp(u)

    def allocate_cache(self, batch: int, device=None, dtype=None, capacity: int | None = None,
                       static: bool = False) -> dict:
        return self.attn.allocate_cache(batch, device=device, dtype=dtype, capacity=capacity, static=static)

    def step(self, u_t: torch.Tensor, cache: dict) -> torch.Tensor:
        return self.attn.step(u_t, cache) + self.mlp(u_t)


def attention_block(**kwargs) -> Callable[[int], CausalSelfAttention]:
    """A block factory: ``attention_block(n_heads=4)(d_model) -> CausalSelfAttention``."""
    return lambda d_model: CausalSelfAttention(d_model, **kwargs)


def mlp_block(**kwargs) -> Callable[[int], MLP]:
    """A block factory: ``mlp_block(expand=4)(d_model) -> MLP``."""
    return lambda d_model: MLP(d_model, **kwargs)


def transformer_block(**kwargs) -> Callable[[int], TransformerBlock]:
    """A block factory: ``transformer_block(n_heads=4)(d_model) -> TransformerBlock`` (a whole parallel layer).

    A Transformer is ``SequenceModel(vocab, d_model, n_layers, block=transformer_block(n_heads=4))``.
    """
    return lambda d_model: TransformerBlock(d_model, **kwargs)


def alternate(*factories: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    """A block factory that cycles through ``factories``: layer i is ``factories[i % len(factories)](d_model)``.

    ``SequenceModel(vocab, d, 2 * n, block=alternate(attention_block(), mlp_block()))`` is a sequential
    pre-norm Transformer of n layers; ``alternate(mamba_block(), mamba_block(), attention_block())`` a
    hybrid with one attention layer in three. Each call of ``alternate`` starts its own count, so make
    one per model.
    """
    if not factories:
        raise ValueError("alternate: give at least one block factory")
    counter = itertools.count()
    return lambda d_model: factories[next(counter) % len(factories)](d_model)
