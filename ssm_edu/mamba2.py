"""The Mamba-2 block (chapter 8): SSD with heads, a convolution over [x, B, C], gated RMSNorm.

Symbols -> code:  u (block input) -> u,  x_t -> x,  z (gate) -> z,  Δ_t -> dt,
A_h = -exp(A_log_h) (one scalar per head) -> A,  B_t, C_t -> B, C,  D_h -> D,
h_t (the P x N state of each head) -> cache["ssm"].
Shapes: b batch, L length, d d_model, Din = expand * d inner channels,
H = Din / P heads of P channels, N state size, G groups of B and C
(head h reads group h // (H / G)), W conv width (d_conv).

    [z, xBC, dt] = in_proj(u)                  (b, L, Din), (b, L, Din + 2GN), (b, L, H)
    [x, B, C]    = SiLU(causal depthwise conv(xBC))
    y            = ssd(x, dt, A, B, C, D, dt_bias, softplus)    per head:
                   h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_tᵀ,  y_t = h_t C_t + D x_t
    out          = out_proj(RMSNorm(y ⊙ SiLU(z)))

What changed from Mamba-1 (``ssm_edu.mamba``), following mamba_ssm's
``Mamba2`` module: one projection makes every input-dependent quantity at
once (no x_proj / dt_proj); B and C go through the convolution with x; A is
a scalar per head, so every entry of a head's P x N state decays at the same
rate, which is what lets SSD use matrix multiplications; the output is
normalised after the gate (RMSNormGated with norm_before_gate=False).

The block follows ``ssm_edu.lm``'s block protocol (forward, allocate_cache,
step). Decoding (``step``) keeps a cache of the last W conv inputs and the
states (b, H, P, N), and advances them with ``selective_state_update`` in its
headed layout, with dt, A, D and dt_bias broadcast over P and N exactly as
mamba_ssm's ``Mamba2.step`` does. Fed a sequence token by token it
reproduces ``forward``: constant memory and work per token, whatever the
length. ``extend`` runs a chunk after the cached positions (prefill,
streaming; chapter 10): the conv window in front of the chunk, then ``ssd``
from the cached states. Both update the cache in place (a CUDA graph of the
step reads and writes the same tensors at every token).

Chapter 8's helpers live here too: ``ssd_cost`` (the multiply-adds of each
step of chunked SSD against the chunk size Q) and the chunk-size explorer
(``ssd_blocks_figure``, ``chunk_size_explorer``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import Shapes
from .discretize import init_log_dt, softplus_inverse
from .mamba import conv_with_window
from .selective import selective_state_update
from .ssd import ssd

__all__ = ["Mamba2", "mamba2_block", "RMSNormGated", "ssd_cost", "ssd_blocks_figure", "chunk_size_explorer"]


class RMSNormGated(nn.Module):
    """RMSNorm(y ⊙ SiLU(z)) · weight, normalised over groups of ``group_size`` channels.

    y, z (..., Din) -> (..., Din). mamba_ssm normalises each group of
    Din / G channels on its own (G = the groups of B and C), so that a model
    split over G devices needs no communication here.
    """

    def __init__(self, d: int, group_size: int | None = None, eps: float = 1e-5):
        super().__init__()
        self.group_size = group_size or d
        if d % self.group_size:
            raise ValueError(f"RMSNormGated: group_size {self.group_size} must divide d = {d}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y, z):
        g = (y * F.silu(z)).unflatten(-1, (-1, self.group_size))  # (..., groups, group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return g.flatten(-2) * self.weight


class Mamba2(nn.Module):
    """One Mamba-2 mixer: (b, L, d_model) -> (b, L, d_model).

    Args:
        d_model: the residual stream's width d.
        d_state: N, the state size per head channel (mamba_ssm: 128; small
            models 64).
        headdim: P, channels per head; H = expand * d_model / P heads.
        expand: Din / d_model.
        ngroups: G, the groups of B and C (G = 1: all heads share them, like
            multi-query attention shares its keys).
        d_conv: W, the width of the causal depthwise convolution.
        chunk_size: Q of the chunked ``ssd``.
        A_init_range: A_log = log U[lo, hi] per head.
        dt_min, dt_max, dt_init_floor: Δ ~ log-uniform in [dt_min, dt_max]
            (clamped below at the floor), stored as dt_bias = softplus⁻¹(Δ).
        impl: passed to ``ssd`` (forward) and ``selective_state_update``
            (step); "auto" picks Triton on a GPU.
    """

    def __init__(self, d_model: int, d_state: int = 64, headdim: int = 32, expand: int = 2, ngroups: int = 1,
                 d_conv: int = 4, chunk_size: int = 64, A_init_range=(1.0, 16.0), dt_min: float = 1e-3,
                 dt_max: float = 1e-1, dt_init_floor: float = 1e-4, impl: str = "auto"):
        super().__init__()
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ValueError(f"Mamba2: headdim P = {headdim} must divide expand * d_model = {d_inner}")
        H = d_inner // headdim
        if H % ngroups:
            raise ValueError(f"Mamba2: ngroups G = {ngroups} must divide the number of heads H = {H}")
        self.d_model, self.d_inner, self.d_state, self.headdim = d_model, d_inner, d_state, headdim
        self.nheads, self.ngroups, self.d_conv, self.chunk_size, self.impl = H, ngroups, d_conv, chunk_size, impl
        self.conv_dim = d_inner + 2 * ngroups * d_state  # the conv sees [x, B, C]

        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + H, bias=False)  # [z, xBC, dt]
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1)
        dt = torch.exp(init_log_dt(H, dt_min, dt_max)).clamp(min=dt_init_floor)  # (H,)
        self.dt_bias = nn.Parameter(softplus_inverse(dt))  # softplus(dt_bias) = Δ at initialisation
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(*A_init_range)))  # A = -exp(A_log) in [-16, -1]
        self.D = nn.Parameter(torch.ones(H))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # an optimiser that honours it leaves these alone
        self.norm = RMSNormGated(d_inner, group_size=d_inner // ngroups)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    # ------------------------------------------------------------------ training / prefill

    def _split(self, zxbcdt):
        """in_proj's output (..., 2 Din + 2GN + H) -> z (..., Din), xBC (..., Din + 2GN), dt (..., H)."""
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _xbc(self, xBC):
        """[x, B, C] (..., conv_dim) -> x (..., H, P), B, C (..., G, N)."""
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        return (x.unflatten(-1, (self.nheads, self.headdim)), B.unflatten(-1, (self.ngroups, self.d_state)),
                C.unflatten(-1, (self.ngroups, self.d_state)))

    def ssm_inputs(self, u):
        """What the block hands to ``ssd`` for an input u (b, L, d_model).

        Returns a dict: x (b, L, H, P), dt (b, L, H) before bias and softplus,
        A (H,), B, C (b, L, G, N), z (b, L, Din). Chapter 8 reads M and C Bᵀ
        of a trained model from it.
        """
        Shapes("Mamba2").check("u", u, f"batch L {self.d_model}")
        L = u.shape[1]
        z, xBC, dt = self._split(self.in_proj(u))
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :L].transpose(1, 2))  # causal: keep the first L outputs
        x, B, C = self._xbc(xBC)
        return dict(x=x, dt=dt, A=-torch.exp(self.A_log), B=B, C=C, z=z)

    def forward(self, u):
        """u (b, L, d_model) -> (b, L, d_model), through ``ssd`` (chunked: any L)."""
        s = self.ssm_inputs(u)
        y = ssd(s["x"], s["dt"], s["A"], s["B"], s["C"], chunk_size=self.chunk_size, D=self.D,
                dt_bias=self.dt_bias, dt_softplus=True, impl=self.impl)  # (b, L, H, P)
        return self.out_proj(self.norm(y.flatten(-2), s["z"]))

    # ------------------------------------------------------------------ decoding

    def allocate_cache(self, batch: int, device=None, dtype=None) -> dict:
        """A fresh decoding cache (``ssm_edu.lm``'s block protocol), at position -1.

        "conv": the last W inputs of the convolution (b, conv_dim, W), oldest
        first; "ssm": the states (b, H, P, N), kept in float32 at least
        (float64 for a float64 model).
        """
        w = self.in_proj.weight
        device = w.device if device is None else device
        dtype = w.dtype if dtype is None else dtype
        return {"conv": torch.zeros(batch, self.conv_dim, self.d_conv, device=device, dtype=dtype),
                "ssm": torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device,
                                   dtype=torch.promote_types(dtype, torch.float32))}

    # The step between the two projections as three Triton kernels (kernels/mamba2_block_step.py). Off by
    # default: chapter 10 measures and explains the PyTorch step; the decode benchmark times the fused one
    # beside it (rows "mamba2-graph-fused"). Set True on a block (or pass fused=True) to use it.
    fused_step = False

    def step(self, u, cache: dict, fused: bool | None = None):
        """One token: u (b, d_model) -> (b, d_model); updates ``cache`` in place.

        The conv window drops its oldest input and takes the newest; the
        states advance through ``selective_state_update`` in the headed
        layout, with Δ, A, D and dt_bias broadcast (stride 0) over P and N.
        ``fused``: the same in three Triton kernels (``kernels/mamba2_block_step.py``)
        where the cache fits them (a float32 state); None follows ``fused_step``.
        """
        Shapes("Mamba2.step").check("u", u, f"batch {self.d_model}")
        proj = self.in_proj(u)
        if fused if fused is not None else self.fused_step:
            from .kernels import mamba2_block_step as kernel

            if kernel.supported(self, proj, cache):
                return self.out_proj(kernel.mamba2_block_step(self, proj, cache))
        z, xBC, dt = self._split(proj)  # (b, Din), (b, conv_dim), (b, H)
        conv = cache["conv"]  # (b, conv_dim, W)
        conv.copy_(torch.roll(conv, shifts=-1, dims=-1))
        conv[:, :, -1] = xBC
        xBC = F.silu((conv * self.conv1d.weight[:, 0, :]).sum(-1) + self.conv1d.bias)  # the conv's output at t
        x, B, C = self._xbc(xBC)  # (b, H, P), (b, G, N), (b, G, N)
        H, P, N = self.nheads, self.headdim, self.d_state
        A = -torch.exp(self.A_log)  # (H,)
        y = selective_state_update(
            cache["ssm"], x, dt[:, :, None].expand(-1, H, P), A[:, None, None].expand(H, P, N), B, C,
            D=self.D[:, None].expand(H, P), dt_bias=self.dt_bias[:, None].expand(H, P), dt_softplus=True,
            impl={"quadratic": "vectorized"}.get(self.impl, self.impl))  # (b, H, P)
        return self.out_proj(self.norm(y.flatten(-2), z))

    def extend(self, u, cache: dict):
        """A chunk u (b, l, d_model) after the positions ``cache`` holds -> (b, l, d_model); updates ``cache``.

        The conv window goes in front of the chunk, and ``ssd`` starts from the
        cached states (``initial_states``) and returns the new ones.
        """
        Shapes("Mamba2.extend").check("u", u, f"batch l {self.d_model}")
        z, xBC, dt = self._split(self.in_proj(u))  # (b, l, Din), (b, l, conv_dim), (b, l, H)
        xBC = F.silu(conv_with_window(self.conv1d, cache["conv"], xBC.mT)).mT  # (b, l, conv_dim)
        x, B, C = self._xbc(xBC)  # (b, l, H, P), (b, l, G, N) twice
        impl = {"quadratic": "vectorized"}.get(self.impl, self.impl)
        y, h = ssd(x, dt, -torch.exp(self.A_log), B, C, chunk_size=self.chunk_size, D=self.D, dt_bias=self.dt_bias,
                   dt_softplus=True, initial_states=cache["ssm"].to(x.dtype), return_final_states=True, impl=impl)
        cache["ssm"].copy_(h)
        return self.out_proj(self.norm(y.flatten(-2), z))


def mamba2_block(**kwargs):
    """A block factory for ``ssm_edu.lm.SequenceModel``: ``mamba2_block(d_state=64)(d_model) -> Mamba2``."""
    return lambda d_model: Mamba2(d_model, **kwargs)


# ---------------------------------------------------------------------- chapter 8: costs


def ssd_cost(L: int, Q: int, N: int, P: int) -> dict[str, float]:
    """Multiply-adds per head of chunked SSD with chunk size Q (the four steps), and its memory.

    Step 1 (diagonal blocks): C Bᵀ is Q x Q x N per chunk and the product with
    X̄ is Q x Q x P: L Q (N + P) in all (half of it is masked out, but a
    matmul unit computes the whole block). Step 2 (chunk states) and step 4
    (off-diagonal outputs): L N P each. Step 3 (state passing): (L / Q) N P.
    Memory: the (L / Q) states of P x N. Q = 1 is the recurrence, Q = L the
    quadratic (attention-like) form.
    """
    chunks = math.ceil(L / Q)
    steps = {"1 diagonal blocks": chunks * Q * Q * (N + P), "2 chunk states": chunks * Q * N * P,
             "3 state passing": chunks * N * P, "4 off-diagonal": chunks * Q * N * P}
    return dict(steps, total=sum(steps.values()), state_memory=chunks * N * P)


# ---------------------------------------------------------------------- chapter 8: the chunk-size explorer


def _example_matrix(L: int, N: int, seed: int):
    """The matrix T = (M ∘ C Bᵀ) diag(Δ) of one head on a random input: y = T x. (L, L) float64."""
    from .ssd import ssd_mask

    gen = torch.Generator().manual_seed(seed)
    dt = F.softplus(torch.randn(1, L, 1, generator=gen, dtype=torch.float64) - 1.5)  # (1, L, 1)
    B = torch.randn(L, N, generator=gen, dtype=torch.float64)
    C = torch.randn(L, N, generator=gen, dtype=torch.float64)
    M = ssd_mask(dt, torch.tensor([-0.5], dtype=torch.float64))[0, 0]  # (L, L)
    return M * (C @ B.T) * dt[0, :, 0]  # column s scaled by Δ_s


def ssd_blocks_figure(Q: int, axes=None, L: int = 48, N: int = 4, seed: int = 0, cost_L: int = 4096,
                      cost_NP: int = 64):
    """Chapter 8: the chunks of size Q on SSD's matrix (left) and the cost of each step against Q (right).

    Left: T = M ∘ C Bᵀ (times Δ) of one head, L x L; the Q x Q diagonal
    blocks (step 1, computed densely) are outlined, and each off-diagonal
    block is labelled with its numerical rank (at most N: steps 2-4 compute
    it through the states). Right: ``ssd_cost`` per head for L = cost_L,
    N = P = cost_NP, with the chosen Q marked.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from . import plots

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1, 1.2]}, layout="constrained")
    ax, bx = axes
    T = _example_matrix(L, N, seed)
    ax.clear()
    logT = torch.log10(T.abs()).masked_fill(T == 0, float("nan"))  # the causal upper triangle stays blank
    im = ax.imshow(logT.numpy(), cmap="viridis", vmin=-4, vmax=float(logT.nan_to_num(-99).max()),
                   interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="log10 |T[t, s]|")
    ax.grid(False)
    c = math.ceil(L / Q)
    ranks = []
    for k in range(c):
        size = min(Q, L - k * Q)
        ax.add_patch(Rectangle((k * Q - 0.5, k * Q - 0.5), size, size, fill=False, ec=plots.PALETTE[3], lw=2))
        for j in range(k):
            ranks.append(int(torch.linalg.matrix_rank(T[k * Q:k * Q + size, j * Q:(j + 1) * Q], rtol=1e-10)))
            if Q >= 6:
                ax.text(j * Q + Q / 2 - 0.5, k * Q + size / 2 - 0.5, str(ranks[-1]), ha="center", va="center",
                        fontsize=9, color="white", fontweight="bold")
    for edge in range(Q, L, Q):
        ax.axhline(edge - 0.5, color="0.85", lw=0.6)
        ax.axvline(edge - 0.5, color="0.85", lw=0.6)
    ax.set_xlabel("input position s [step]")
    ax.set_ylabel("output position t [step]")
    rank_text = f"off-diagonal blocks: rank <= {max(ranks)} = N" if ranks else "one chunk: the quadratic form"
    ax.set_title(f"T = M ∘ C Bᵀ (× Δ), L = {L}, Q = {Q}: {c} chunks\n"
                 f"diagonal blocks (outlined): step 1; {rank_text}", fontsize=9)

    Qs = [2**k for k in range(int(math.log2(cost_L)) + 1)]
    costs = [ssd_cost(cost_L, q, cost_NP, cost_NP) for q in Qs]
    bx.clear()
    lines = [("1 diagonal blocks", "step 1: diagonal blocks, L Q (N + P)"),
             ("2 chunk states", "steps 2 and 4 (each): L N P"),
             ("3 state passing", "step 3: (L / Q) N P = the states stored")]
    for i, (key, label) in enumerate(lines):
        bx.loglog(Qs, [cst[key] for cst in costs], "-", color=plots.PALETTE[i], label=label)
    bx.loglog(Qs, [cst["total"] for cst in costs], "k-", lw=2.4, label="total")
    mine = ssd_cost(cost_L, Q, cost_NP, cost_NP)
    bx.plot([Q], [mine["total"]], "o", ms=9, color=plots.PALETTE[3], label=f"Q = {Q}")
    bx.set_xlabel("chunk size Q [steps]")
    bx.set_ylabel("multiply-adds (or numbers stored) per head")
    bx.set_title(f"cost per head at L = {cost_L}, N = P = {cost_NP}\nQ = {Q}: {mine['total'] / 1e6:.0f} M multiply-adds",
                 fontsize=9)
    bx.legend(fontsize=7, loc="upper center")
    return axes


def chunk_size_explorer(Q: int = 8):
    """Chapter 8: choose the chunk size Q; watch the block structure and the cost of each step."""
    import ipywidgets as W

    from .widgets import _explorer, _slider

    return _explorer(lambda q: ssd_blocks_figure(q), _slider(W.IntSlider, Q, 1, 48, 1, "chunk size Q"))
