"""The Mamba block (chapter 7): a selective SSM between projections, a short convolution and a gate.

Symbols -> code:  D (model width) -> d_model,  E·D -> d_inner (E = expand),
N -> d_state,  R (rank of Δ's projection) -> dt_rank,  x_t -> x,  the gate
-> z,  δ_t (Δ before its projection) -> delta_low,  Δ_t -> dt,  A -> A
(stored as A_log),  B_t, C_t -> B, C,  D (the skip) -> D.
Shapes: b batch, L length.

    x, z   = in_proj(u)                      (b, L, d_inner) each
    x      = SiLU(causal depthwise conv1d(x))    width d_conv, per channel
    δ, B, C = x_proj(x)                       (b, L, dt_rank), (b, L, N), (b, L, N)
    Δ      = softplus(dt_proj(δ) + dt_bias)  (b, L, d_inner)
    A      = -exp(A_log)                     (d_inner, N)
    y      = selective_scan(x, Δ, A, B, C, D, z)   = (SSM(x) + D ⊙ x) ⊙ SiLU(z)
    out    = out_proj(y)                     (b, L, d_model)

Δ, B and C are computed from the input at every position: that is the
selection. The scan is ``ssm_edu.selective_scan`` (choose ``scan_impl``);
decoding one token at a time uses ``ssm_edu.selective_state_update`` on a
cache holding the last d_conv inputs of the convolution and the SSM state
(b, d_inner, N): a constant amount of memory, whatever the length.

Initialisation (Gu & Dao 2023; mamba_ssm's ``Mamba``):
* A_log = log(1, 2, ..., N) in every channel: A = -(1 .. N), "S4D-Real";
* D = 1; neither A_log nor D is weight-decayed (``_no_weight_decay``);
* dt_proj.weight ~ U(-s, s) with s = dt_scale / sqrt(dt_rank);
* dt_proj.bias = softplus⁻¹(Δ₀) with Δ₀ log-uniform in [dt_min, dt_max]
  (default [1e-3, 1e-1]) and clamped below at dt_init_floor, so that at
  initialisation softplus(bias) spans memories from ~10 to ~1000 steps.

The block follows ``ssm_edu.lm``'s block protocol (forward, allocate_cache,
step) and owns its decoding: ``step`` for one token, ``extend`` for a chunk
after the cached positions (prefill, streaming; chapter 10), which carries
the conv window in front of the chunk (``conv_with_window``, shared with the
Mamba-2 and DeltaNet blocks) and starts the scan from the cached state
(``ssm_edu.inference.selective_scan_from``). Both update the cache in place,
so that a CUDA graph of the step (``ssm_edu.inference.Decoder``) reads and
writes the same tensors at every token.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .discretize import init_log_dt, softplus_inverse
from .selective import selective_scan, selective_state_update

__all__ = ["Mamba", "mamba_block", "conv_with_window", "selective_memory", "selective_memory_figure",
           "selective_memory_explorer"]


def conv_with_window(conv1d: nn.Conv1d, window: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Causal depthwise conv of a chunk x (b, C, l) after the cached window (b, C, W); updates the window in place.

    The window holds the last W inputs (oldest first, zeros before the
    sequence), as ``step`` keeps it. Returns the conv's l outputs (b, C, l).
    """
    W = window.shape[-1]
    full = torch.cat([window[..., 1:], x], dim=-1)  # (b, C, W - 1 + l): the W - 1 inputs before the chunk, then it
    window.copy_(full[..., -W:])
    return F.conv1d(full, conv1d.weight, conv1d.bias, groups=conv1d.groups)  # (b, C, l)


class Mamba(nn.Module):
    """The Mamba (S6) block: (b, L, d_model) -> (b, L, d_model).

    Args:
        d_model: width of the residual stream.
        d_state: N, the state size per channel (16 in the paper).
        d_conv: width of the causal depthwise convolution (4).
        expand: d_inner = expand * d_model (2).
        dt_rank: rank of Δ's projection; "auto" is ceil(d_model / 16).
        dt_min, dt_max: range of the initial Δ (log-uniform).
        dt_init_floor: smallest initial Δ.
        dt_scale: scale of dt_proj's initial weights.
        bias: biases in in_proj and out_proj.
        conv_bias: bias in the convolution.
        scan_impl: ``impl`` for ``selective_scan`` in forward.
        step_impl: ``impl`` for ``selective_state_update`` in step.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank="auto",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4, dt_scale: float = 1.0,
                 bias: bool = False, conv_bias: bool = True, scan_impl: str = "auto", step_impl: str = "auto"):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.scan_impl, self.step_impl = scan_impl, step_impl
        d_inner = self.d_inner

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

        # Δ's projection: small weights, and a bias that puts softplus(bias) at Δ₀ in [dt_min, dt_max]
        s = dt_scale / math.sqrt(self.dt_rank)
        nn.init.uniform_(self.dt_proj.weight, -s, s)
        dt0 = torch.exp(init_log_dt(d_inner, dt_min, dt_max)).clamp(min=dt_init_floor)  # (d_inner,)
        with torch.no_grad():
            self.dt_proj.bias.copy_(softplus_inverse(dt0))
        self.dt_proj.bias._no_reinit = True

        # S4D-Real: A[d, n] = -(n + 1) in every channel
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)  # (d_inner, N)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(d_inner))
        self.D._no_weight_decay = True

    def A(self) -> torch.Tensor:
        """The state matrix's diagonal, always negative: (d_inner, N), float32 at least."""
        return -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))

    def scan_inputs(self, u: torch.Tensor) -> dict:
        """Everything the scan needs, computed from the block's input u (b, L, d_model).

        Returns a dict of ``selective_scan``'s arguments (channels-first):
        u (the conv output x) and z, delta (b, d_inner, L) (before bias and
        softplus), A (d_inner, N), B, C (b, N, L), D and delta_bias (d_inner,).
        Δ itself is softplus(delta + delta_bias[:, None]).
        """
        L = u.shape[1]
        x, z = self.in_proj(u).mT.chunk(2, dim=1)  # (b, d_inner, L) each
        x = F.silu(self.conv1d(x)[..., :L])  # causal: drop the outputs that saw the right padding
        delta_low, B, C = self.x_proj(x.mT).split([self.dt_rank, self.d_state, self.d_state], dim=-1)  # (b, L, ·)
        delta = (delta_low @ self.dt_proj.weight.T).mT  # (b, d_inner, L); the bias goes in as delta_bias
        return dict(u=x, delta=delta, A=self.A(), B=B.mT, C=C.mT, D=self.D, z=z, delta_bias=self.dt_proj.bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        y = selective_scan(**self.scan_inputs(u), delta_softplus=True, impl=self.scan_impl)  # (b, d_inner, L)
        return self.out_proj(y.mT)  # (b, L, d_model)

    def allocate_cache(self, batch: int, device=None, dtype=None) -> dict:
        """A fresh cache: the last d_conv inputs of the conv (b, d_inner, d_conv) and the state (b, d_inner, N).

        The state is kept in float32 at least (float64 for a float64 model).
        """
        w = self.in_proj.weight
        device = w.device if device is None else device
        dtype = w.dtype if dtype is None else dtype
        return {
            "conv": torch.zeros(batch, self.d_inner, self.d_conv, device=device, dtype=dtype),
            "ssm": torch.zeros(batch, self.d_inner, self.d_state, device=device,
                               dtype=torch.promote_types(dtype, torch.float32)),
        }

    def step(self, u_t: torch.Tensor, cache: dict) -> torch.Tensor:
        """One token: u_t (b, d_model) -> (b, d_model); updates ``cache`` in place."""
        x, z = self.in_proj(u_t).chunk(2, dim=-1)  # (b, d_inner) each
        conv = cache["conv"]  # (b, d_inner, d_conv), oldest input first
        conv.copy_(torch.roll(conv, -1, dims=-1))
        conv[:, :, -1] = x
        x = (conv * self.conv1d.weight[:, 0, :]).sum(-1)  # (b, d_inner): the conv's output at t
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        delta_low, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = delta_low @ self.dt_proj.weight.T  # (b, d_inner)
        y = selective_state_update(cache["ssm"], x, dt, self.A(), B, C, D=self.D, z=z, dt_bias=self.dt_proj.bias,
                                   dt_softplus=True, impl=self.step_impl)  # (b, d_inner)
        return self.out_proj(y)

    def extend(self, u: torch.Tensor, cache: dict) -> torch.Tensor:
        """A chunk u (b, l, d_model) after the positions ``cache`` holds -> (b, l, d_model); updates ``cache``.

        The rows of ``forward`` on the whole sequence that belong to the
        chunk: the conv window goes in front of the chunk, and the scan starts
        from the cached state (``selective_scan_from``, by linearity).
        """
        from .inference import selective_scan_from  # chapter 10's scan from a carried state

        x, z = self.in_proj(u).mT.chunk(2, dim=1)  # (b, d_inner, l) each
        x = F.silu(conv_with_window(self.conv1d, cache["conv"], x))
        delta_low, B, C = self.x_proj(x.mT).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (delta_low @ self.dt_proj.weight.T).mT  # (b, d_inner, l)
        y, h = selective_scan_from(x, delta, self.A(), B.mT, C.mT, D=self.D, z=z, delta_bias=self.dt_proj.bias,
                                   delta_softplus=True, initial_state=cache["ssm"], impl=self.scan_impl)
        cache["ssm"].copy_(h)
        return self.out_proj(y.mT)  # (b, l, d_model)


def mamba_block(**kwargs):
    """A block factory for ``SequenceModel``: ``mamba_block(d_state=16)(d_model) -> Mamba``."""
    return lambda d_model: Mamba(d_model, **kwargs)


# ---------------------------------------------------------------------- chapter 7: the Δ explorer


def selective_memory(log10_dt_token: float, log10_dt_other: float, L: int = 60, tokens=(10, 35)):
    """What one selective mode remembers of two tokens, when Δ is large at the tokens and small elsewhere.

    One mode, A = -1, B = C = 1: y_t = Σ_s M[t, s] x_s with
    M[t, s] = Δ_s exp(-(Δ_{s+1} + ... + Δ_t)) (the selective scan's weights).
    Returns (Δ (L,), {s: M[:, s] (L,)} for s in ``tokens``, M_lti[:, tokens[0]]),
    the last being the LTI system with Δ = Δ_other everywhere. float64.
    """
    dt = torch.full((L,), 10.0 ** log10_dt_other, dtype=torch.float64)
    dt[list(tokens)] = 10.0 ** log10_dt_token
    cum = torch.cumsum(dt, 0)  # Σ_{r<=t} Δ_r
    t = torch.arange(L)

    def weights(delta, cumsum, s):  # M[:, s]: zero before s
        return torch.where(t >= s, delta[s] * torch.exp(-(cumsum - cumsum[s])), torch.zeros_like(cumsum))

    lti = torch.full_like(dt, 10.0 ** log10_dt_other)
    return dt, {s: weights(dt, cum, s) for s in tokens}, weights(lti, torch.cumsum(lti, 0), tokens[0])


def selective_memory_figure(log10_dt_token: float = 0.0, log10_dt_other: float = -2.0, axes=None):
    """Chapter 7: Δ_t (left) and the weight with which the output remembers each token (right)."""
    import matplotlib.pyplot as plt

    from . import plots

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [1, 1.6]})
    tokens = (10, 35)
    dt, K, lti = selective_memory(log10_dt_token, log10_dt_other, tokens=tokens)
    t = torch.arange(len(dt))
    a, b = axes
    a.clear()
    a.semilogy(t, dt, "o-", ms=3, color=plots.PALETTE[0])
    a.set_ylim(1e-4, 20)
    a.set_xlabel("position t [tokens]")
    a.set_ylabel("Δ_t")
    a.set_title("step size along the sequence")
    b.clear()
    for (s, k), color in zip(K.items(), (plots.PALETTE[3], plots.PALETTE[2])):
        b.semilogy(t[s:], k[s:], color=color, label=f"selective: token at t = {s}")
    b.semilogy(t[tokens[0]:], lti[tokens[0]:], "--", color="0.4", label=f"LTI, Δ = {10 ** log10_dt_other:.3g}: token at t = {tokens[0]}")
    b.set_ylim(1e-6, 2)
    b.set_xlabel("position t [tokens]")
    b.set_ylabel("weight M[t, s] of token s in y_t")
    kept = math.exp(-(10 ** log10_dt_token))  # what the second token's step leaves of the state before it
    b.set_title(f"Δ = {10 ** log10_dt_token:.3g} at the tokens, {10 ** log10_dt_other:.3g} elsewhere: "
                f"{100 * kept:.2g}% of the state survives t = {tokens[1]}", fontsize=10)
    b.legend(loc="lower left")
    return axes


def selective_memory_explorer(log10_dt_token: float = 0.0, log10_dt_other: float = -2.0):
    """Chapter 7: choose Δ at two tokens and Δ elsewhere (log scale); watch what the state remembers."""
    import ipywidgets as W

    from .widgets import _explorer, _slider

    return _explorer(lambda a, b: selective_memory_figure(a, b),
                     _slider(W.FloatSlider, log10_dt_token, -3.0, 1.0, 0.1, "log10 Δ at the tokens"),
                     _slider(W.FloatSlider, log10_dt_other, -4.0, 0.0, 0.1, "log10 Δ elsewhere"))
