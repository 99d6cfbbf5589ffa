"""The (Gated) DeltaNet block (chapter 11): a matrix memory written by the delta rule.

Symbols -> code:  u (block input) -> u,  q_t, k_t, v_t -> q, k, v,  β_t -> beta,
g_t = log α_t (the log decay) -> g,  A = exp(A_log) (a rate per head) -> A_log,
z (output gate) -> z,  S_t (each head's K x V state) -> cache["S"].
Shapes: b batch, L length, d d_model, H heads, K key size per head (head_k_dim),
V value size per head (head_v_dim), W conv width (d_conv).

    [q, k, v, z, b, a] = in_proj(u)          (b, L, HK), (b, L, HK), (b, L, HV), (b, L, HV), (b, L, H), (b, L, H)
    [q, k, v]          = SiLU(causal depthwise conv([q, k, v]))
    q, k               = q / ‖q‖, k / ‖k‖    (per head)
    β                  = sigmoid(b)
    g                  = -exp(A_log) · softplus(a + dt_bias)      (gated; DeltaNet: g = 0)
    o                  = delta_rule(q, k, v, β, g)    per head:
                         S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,  o_t = S_tᵀ q_t / √K
    out                = out_proj(RMSNorm(o ⊙ SiLU(z)))           (normalised per head)

This follows fla's ``GatedDeltaNet`` layer (and its ``DeltaNet`` when
``gated=False``), kept small: one fused input projection, one depthwise
convolution over [q, k, v] (equal to fla's three short convolutions, no bias),
and Mamba-2's gated RMSNorm applied per head. The gate g has Mamba-2's form,
Δ·A with Δ = softplus(·) and A = exp(A_log) > 0, so α = exp(g) is in (0, 1].

The state of a head is a K x V matrix, like a Mamba-2 head's P x N state
(``ssm_edu.mamba2``): with K = N and V = P the two hold the same number of
numbers, and differ only in the update: Mamba-2 adds Δ x_t B_tᵀ to the
decayed state, DeltaNet first removes what the state returned for k_t.

The block follows ``ssm_edu.lm``'s block protocol: ``forward`` runs the
chunked ``delta_rule`` over the whole sequence; ``step`` advances a cache of
the last W conv inputs and the states S (b, H, K, V) by one token with the
delta rule's step, written out (four lines); fed a sequence token by token
it reproduces ``forward``. ``extend`` runs a chunk after the cached
positions (prefill, streaming; chapter 10): the conv window in front of the
chunk (``ssm_edu.mamba.conv_with_window``), then the chunked ``delta_rule``
from the cached states. Both update the cache in place.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import Shapes
from .delta import delta_rule
from .discretize import init_log_dt, softplus_inverse
from .mamba import conv_with_window
from .mamba2 import RMSNormGated

__all__ = ["DeltaNet", "deltanet_block", "delta_step"]


def delta_step(S, q, k, v, beta, g=None, scale=None):
    """One step of the (gated) delta rule, in place on S; returns o_t.

    S (b, H, K, V) the state; q, k (b, H, K); v (b, H, V); beta, g (b, H)
    (g None: no decay); scale 1/√K by default. Returns o (b, H, V).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if g is not None:
        S.mul_(torch.exp(g)[..., None, None])  # S <- α S
    u = beta[..., None] * (v - torch.einsum("bhkv,bhk->bhv", S, k))  # (b, H, V): the correction for k
    S.add_(k[..., :, None] * u[..., None, :])  # S <- S + k uᵀ
    return scale * torch.einsum("bhkv,bhk->bhv", S, q)  # o = scale · Sᵀ q


class DeltaNet(nn.Module):
    """One (Gated) DeltaNet mixer: (b, L, d_model) -> (b, L, d_model).

    Args:
        d_model: the residual stream's width d.
        n_heads: H.
        head_k_dim: K, the key (and query) size per head.
        head_v_dim: V, the value size per head. The state is H·K·V numbers.
        gated: True for Gated DeltaNet (a decay α_t per head and step), False
            for DeltaNet (α = 1).
        d_conv: W, the width of the causal depthwise convolution.
        chunk_size: the chunk length of ``delta_rule``'s vectorized form.
        A_init_range: A = exp(A_log) ~ U[lo, hi] per head (fla: (0, 16)).
        dt_min, dt_max, dt_init_floor: softplus(dt_bias) ~ log-uniform in
            [dt_min, dt_max], clamped below at the floor (as in Mamba-2).
        impl: passed to ``delta_rule`` in ``forward`` ("auto": vectorized).
    """

    def __init__(self, d_model: int, n_heads: int = 4, head_k_dim: int = 16, head_v_dim: int = 32, gated: bool = True,
                 d_conv: int = 4, chunk_size: int = 64, A_init_range=(0.0, 16.0), dt_min: float = 1e-3,
                 dt_max: float = 1e-1, dt_init_floor: float = 1e-4, impl: str = "auto"):
        super().__init__()
        H, K, V = n_heads, head_k_dim, head_v_dim
        self.d_model, self.nheads, self.head_k_dim, self.head_v_dim = d_model, H, K, V
        self.gated, self.d_conv, self.chunk_size, self.impl = gated, d_conv, chunk_size, impl
        self.conv_dim = 2 * H * K + H * V  # the conv sees [q, k, v]
        self.in_proj = nn.Linear(d_model, self.conv_dim + H * V + H + (H if gated else 0), bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1,
                                bias=False)
        if gated:
            A = torch.empty(H).uniform_(*A_init_range)
            self.A_log = nn.Parameter(torch.log(A))
            dt = torch.exp(init_log_dt(H, dt_min, dt_max)).clamp(min=dt_init_floor)  # (H,)
            self.dt_bias = nn.Parameter(softplus_inverse(dt))
            for p in (self.A_log, self.dt_bias):
                p._no_weight_decay = True
        self.norm = RMSNormGated(H * V, group_size=V)  # per head, as fla's FusedRMSNormGated
        self.out_proj = nn.Linear(H * V, d_model, bias=False)

    @property
    def state_size(self) -> int:
        """Numbers in the recurrent state of one sequence (H·K·V; the conv window not counted)."""
        return self.nheads * self.head_k_dim * self.head_v_dim

    # ------------------------------------------------------------------ shared by forward and step

    def _split(self, proj):
        """in_proj's output (..., ·) -> qkv (..., conv_dim), z (..., HV), b (..., H), a (..., H) or None."""
        H, V = self.nheads, self.head_v_dim
        parts = torch.split(proj, [self.conv_dim, H * V, H] + ([H] if self.gated else []), dim=-1)
        return parts[0], parts[1], parts[2], (parts[3] if self.gated else None)

    def _heads(self, qkv, b, a):
        """Conv outputs (..., conv_dim) and b, a (..., H) -> q, k (..., H, K) unit, v (..., H, V), β, g (..., H)."""
        H, K, V = self.nheads, self.head_k_dim, self.head_v_dim
        q, k, v = torch.split(F.silu(qkv), [H * K, H * K, H * V], dim=-1)
        q = F.normalize(q.unflatten(-1, (H, K)), dim=-1)  # unit queries and keys: the regression reading
        k = F.normalize(k.unflatten(-1, (H, K)), dim=-1)
        beta = torch.sigmoid(b)
        g = -torch.exp(self.A_log) * F.softplus(a + self.dt_bias) if self.gated else None  # (..., H), <= 0
        return q, k, v.unflatten(-1, (H, V)), beta, g

    # ------------------------------------------------------------------ training / prefill

    def delta_inputs(self, u):
        """What the block hands to ``delta_rule`` for u (b, L, d_model): a dict q, k (b, L, H, K),
        v (b, L, H, V), beta, g (b, L, H) (g None when not gated), z (b, L, HV)."""
        Shapes("DeltaNet").check("u", u, f"batch L {self.d_model}")
        L = u.shape[1]
        qkv, z, b, a = self._split(self.in_proj(u))
        qkv = self.conv1d(qkv.transpose(1, 2))[..., :L].transpose(1, 2)  # causal: keep the first L outputs
        q, k, v, beta, g = self._heads(qkv, b, a)
        return dict(q=q, k=k, v=v, beta=beta, g=g, z=z)

    def forward(self, u):
        """u (b, L, d_model) -> (b, L, d_model), through the chunked ``delta_rule``."""
        s = self.delta_inputs(u)
        o = delta_rule(s["q"], s["k"], s["v"], s["beta"], s["g"], chunk_size=self.chunk_size, impl=self.impl)
        return self.out_proj(self.norm(o.flatten(-2), s["z"]))  # o: (b, L, H, V)

    # ------------------------------------------------------------------ decoding

    def allocate_cache(self, batch: int, device=None, dtype=None) -> dict:
        """A fresh decoding cache (``ssm_edu.lm``'s block protocol), at position -1.

        "conv": the last W conv inputs (b, conv_dim, W), oldest first; "S": the
        states (b, H, K, V), kept in float32 at least (float64 for a float64 model).
        """
        w = self.in_proj.weight
        device = w.device if device is None else device
        dtype = w.dtype if dtype is None else dtype
        return {"conv": torch.zeros(batch, self.conv_dim, self.d_conv, device=device, dtype=dtype),
                "S": torch.zeros(batch, self.nheads, self.head_k_dim, self.head_v_dim, device=device,
                                 dtype=torch.promote_types(dtype, torch.float32))}

    def step(self, u, cache: dict):
        """One token: u (b, d_model) -> (b, d_model); updates ``cache`` in place (``delta_step``)."""
        Shapes("DeltaNet.step").check("u", u, f"batch {self.d_model}")
        qkv, z, b, a = self._split(self.in_proj(u))  # (b, conv_dim), (b, HV), (b, H), (b, H) or None
        conv = cache["conv"]  # (b, conv_dim, W)
        conv.copy_(torch.roll(conv, shifts=-1, dims=-1))
        conv[:, :, -1] = qkv
        qkv = (conv * self.conv1d.weight[:, 0, :]).sum(-1)  # the conv's output at t
        q, k, v, beta, g = self._heads(qkv, b, a)
        S = cache["S"]
        work = S.dtype
        o = delta_step(S, q.to(work), k.to(work), v.to(work), beta.to(work), None if g is None else g.to(work))
        return self.out_proj(self.norm(o.to(u.dtype).flatten(-2), z))

    def extend(self, u, cache: dict):
        """A chunk u (b, l, d_model) after the positions ``cache`` holds -> (b, l, d_model); updates ``cache``.

        The conv window goes in front of the chunk; the chunked ``delta_rule``
        starts from the cached states and returns the new ones.
        """
        Shapes("DeltaNet.extend").check("u", u, f"batch l {self.d_model}")
        qkv, z, b, a = self._split(self.in_proj(u))  # (b, l, conv_dim), (b, l, HV), (b, l, H), (b, l, H) or None
        qkv = conv_with_window(self.conv1d, cache["conv"], qkv.transpose(1, 2)).transpose(1, 2)
        q, k, v, beta, g = self._heads(qkv, b, a)
        o, S = delta_rule(q, k, v, beta, g, chunk_size=self.chunk_size, initial_state=cache["S"],
                          return_final_state=True, impl=self.impl)
        cache["S"].copy_(S)
        return self.out_proj(self.norm(o.flatten(-2), z))


def deltanet_block(**kwargs):
    """A block factory for ``ssm_edu.lm.SequenceModel``: ``deltanet_block(head_k_dim=16)(d_model) -> DeltaNet``."""
    return lambda d_model: DeltaNet(d_model, **kwargs)
