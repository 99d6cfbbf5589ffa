"""The Mamba-3 block (chapter 9): trapezoidal steps, rotated B and C, optional MIMO, no short conv.

Symbols -> code:  u (block input) -> u,  x_t -> x,  z (gate) -> z,
Δ_t -> dt,  A_t (data-dependent, per head and token) -> A,  λ_t -> lam,
θ_t (the raw angle projection, shared by the heads) -> angle,
ω_t = π tanh(θ_t) (angular rate, radians per unit of Δ) -> theta,
B_t, C_t (after RMSNorm and the per-head bias) -> B, C,  D -> D,
W_x, W_z, W_o (MIMO's per-head, per-rank scales) -> mimo_x, mimo_z, mimo_o.
Shapes: b batch, L length, d d_model, Din = expand * d inner channels,
H = Din / P heads of P channels, N state size (even), G groups of B and C
before their per-head bias, R the MIMO rank (1 for SISO), S rotated pairs.

    [z, x, B, C, dd_dt, dd_A, trap, θ] = in_proj(u)
    Δ = softplus(dd_dt + dt_bias)                  (b, L, H)
    A = -max(f(dd_A), A_floor)                     (b, L, H), f below
    λ = sigmoid(trap)                              (b, L, H)
    B = RMSNorm_N(B) + B_bias,  C = RMSNorm_N(C) + C_bias      (b, L, H, R, N)
    ω = π tanh(θ) on the first S pairs, 0 on the others    (b, L, H, N/2)
    y = mamba3(x, Δ, A, B, C, λ, ω, D, z)          per head, state P x N:
        h_t = α_t h_{t-1} + β_t x_{t-1} k_{t-1}ᵀ + γ_t x_t k_tᵀ,  y_t = h_t q_t + D x_t
        k_t, q_t = B_t, C_t turned pair by pair by Φ_t = Σ_{r<=t} ω_r Δ_r
    out = out_proj(y ⊙ SiLU(z))      (MIMO: out_proj(Σ_r W_o[r] ⊙ y_r))

What changed from Mamba-2 (``ssm_edu.mamba2``), following mamba_ssm's
``Mamba3`` module (``mamba_ssm/modules/mamba3.py``):

* no causal conv1d: the trapezoid's β-term already mixes each token with the
  one before it (a data-dependent width-2 convolution), and the B/C biases
  give every head a token-independent part of B and C (the spec marks this
  justification as second-hand; the removal itself is in the code);
* A is data-dependent (one value per head *and token*), made negative by
  ``f``: ``"heavy_tail"`` f(v) = 1 + v for v >= 0 and 1 / (1 - v) below (the
  current official code, adopted after loss explosions with softplus), or
  ``"softplus"`` (the first release). A <= -A_floor keeps every head decaying;
* B and C are RMS-normalised over N (with a learnable weight) and get a
  per-head, per-rank bias initialised to 1, so B and C become per head;
* a fraction ``rope_fraction`` of the state's pairs rotate (the "RoPE
  trick" of chapter 9: a complex diagonal state); S = floor(N *
  rope_fraction), rounded down to even, halved. ``rope_fraction=0`` turns
  the rotations off (not an official setting: chapter 9's ablation with
  real decays only);
* MIMO (``mimo_rank=R``): each head reads R copies of its input,
  x_r = x ⊙ W_x[r] (init 1/R), gates them with z_r = z ⊙ W_z[r] (init 1),
  and writes Σ_r W_o[r] ⊙ y_r (init 1/R). The state stays P x N.
* no norm before out_proj (mamba_ssm's default, ``is_outproj_norm=False``).

The block follows ``ssm_edu.lm``'s block protocol (forward, allocate_cache,
step). The decoding cache is a ``Mamba3State`` (h, Φ, k, x): the state, the
cumulative angles and the previous token's rotated k and input x, which the
next step's β-term needs. ``step`` advances it with ``ssm_edu.mamba3_step``
and, fed a sequence token by token, reproduces ``forward``; ``extend`` runs
a chunk after the cached positions with the chunked ``mamba3`` (prefill,
streaming; chapter 10). Both write the new state into the cache's tensors
in place, so that a CUDA graph of the step reads and writes the same
tensors at every token.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import Shapes
from .discretize import init_log_dt, softplus_inverse
from .mamba3 import Mamba3State, mamba3, mamba3_step

__all__ = ["Mamba3", "mamba3_block", "rope_pairs", "A_ACTIVATIONS", "mamba3_decode_cost", "trapezoid_error",
           "rotation_readout", "rotation_counter", "rotation_figure", "rotation_explorer"]


def _heavy_tail(v):
    """f(v) = 1 + v (v >= 0), 1 / (1 - v) (v < 0): positive, slope 1 at 0, only a 1/|v| tail below."""
    return torch.where(v >= 0, 1 + v.clamp(min=0), 1 / (1 - v.clamp(max=0)))  # clamps: no inf in the unused branch


A_ACTIVATIONS = {"heavy_tail": _heavy_tail, "softplus": F.softplus}


def rope_pairs(d_state: int, rope_fraction: float) -> int:
    """S, the number of rotated pairs: floor(N * rope_fraction) rounded down to even, halved."""
    if not 0 <= rope_fraction <= 1:
        raise ValueError(f"rope_pairs: rope_fraction must be in [0, 1]; got {rope_fraction}")
    dims = int(d_state * rope_fraction)
    return (dims - dims % 2) // 2


class Mamba3(nn.Module):
    """One Mamba-3 mixer: (b, L, d_model) -> (b, L, d_model).

    Args:
        d_model: the residual stream's width d.
        d_state: N (even), the state size per head channel (mamba_ssm: 128).
        headdim: P, channels per head; H = expand * d_model / P heads.
        expand: Din / d_model.
        ngroups: G, groups of the projected B and C (the per-head biases then
            make them per head).
        rope_fraction: the fraction of the N state dimensions that rotate
            (mamba_ssm: 0.5 or 1.0; 0 turns rotations off).
        mimo_rank: None for SISO, or R >= 1 for MIMO of rank R.
        chunk_size: Q of the chunked ``mamba3``.
        dt_min, dt_max, dt_init_floor: Δ ~ log-uniform in [dt_min, dt_max]
            (clamped below at the floor), stored as dt_bias = softplus⁻¹(Δ).
        A_floor: A <= -A_floor.
        A_activation: ``"heavy_tail"`` (default) or ``"softplus"``, the f of A = -f(dd_A).
        impl: passed to ``mamba3`` in ``forward`` ("auto" picks Triton on a GPU).
    """

    def __init__(self, d_model: int, d_state: int = 64, headdim: int = 32, expand: int = 2, ngroups: int = 1,
                 rope_fraction: float = 0.5, mimo_rank: int | None = None, chunk_size: int = 64,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4, A_floor: float = 1e-4,
                 A_activation: str = "heavy_tail", impl: str = "auto"):
        super().__init__()
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ValueError(f"Mamba3: headdim P = {headdim} must divide expand * d_model = {d_inner}")
        H = d_inner // headdim
        if H % ngroups:
            raise ValueError(f"Mamba3: ngroups G = {ngroups} must divide the number of heads H = {H}")
        if d_state % 2:
            raise ValueError(f"Mamba3: d_state N = {d_state} must be even (the state rotates in pairs)")
        if mimo_rank is not None and (isinstance(mimo_rank, bool) or not isinstance(mimo_rank, int) or mimo_rank < 1):
            raise ValueError(f"Mamba3: mimo_rank must be None (SISO) or an int >= 1; got {mimo_rank!r}")
        if A_activation not in A_ACTIVATIONS:
            raise ValueError(f"Mamba3: A_activation must be one of {sorted(A_ACTIVATIONS)}; got {A_activation!r}")
        self.d_model, self.d_inner, self.d_state, self.headdim = d_model, d_inner, d_state, headdim
        self.nheads, self.ngroups, self.chunk_size, self.impl = H, ngroups, chunk_size, impl
        self.mimo = mimo_rank is not None
        self.rank = mimo_rank or 1
        self.n_angles = rope_pairs(d_state, rope_fraction)  # S
        self.A_floor, self.A_activation = A_floor, A_activation
        R, G, N = self.rank, ngroups, d_state
        # [z, x, B, C, dd_dt, dd_A, trap, θ]
        self.sizes = [d_inner, d_inner, R * G * N, R * G * N, H, H, H, self.n_angles]
        self.in_proj = nn.Linear(d_model, sum(self.sizes), bias=False)
        dt = torch.exp(init_log_dt(H, dt_min, dt_max)).clamp(min=dt_init_floor)  # (H,)
        self.dt_bias = nn.Parameter(softplus_inverse(dt))  # softplus(dt_bias) = Δ at initialisation
        self.B_norm = nn.RMSNorm(N, eps=1e-5)
        self.C_norm = nn.RMSNorm(N, eps=1e-5)
        self.B_bias = nn.Parameter(torch.ones(H, R, N))  # every head starts with B = C = norm(.) + 1
        self.C_bias = nn.Parameter(torch.ones(H, R, N))
        self.D = nn.Parameter(torch.ones(H))
        no_decay = [self.dt_bias, self.D, self.B_bias, self.C_bias]
        if self.mimo:
            self.mimo_x = nn.Parameter(torch.full((H, R, headdim), 1 / R))
            self.mimo_z = nn.Parameter(torch.ones(H, R, headdim))
            self.mimo_o = nn.Parameter(torch.full((H, R, headdim), 1 / R))
            no_decay += [self.mimo_x, self.mimo_z, self.mimo_o]
        for p in no_decay:
            p._no_weight_decay = True  # biases and scales, not matrices: leave them where they start
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    # ------------------------------------------------------------------ the per-token quantities

    def ssm_inputs(self, u: torch.Tensor, proj: torch.Tensor | None = None) -> dict:
        """What the block hands to ``mamba3`` for u (b, L, d_model) or one token (b, d_model).

        ``proj``: ``in_proj(u)``, where the caller has computed it already.

        Returns a dict with a leading (b, L) or (b,) written "...":
        x, z (..., H, P) SISO or (..., H, R, P) MIMO; dt, A, lam (..., H);
        B, C (..., H, N) or (..., H, R, N), normalised and biased, one per
        head; theta (..., H, N/2) the angular rates π tanh(θ) (zero for the
        pairs that do not rotate); angle (..., S) the raw θ.
        """
        H, P, R, G, N = self.nheads, self.headdim, self.rank, self.ngroups, self.d_state
        proj = self.in_proj(u) if proj is None else proj
        z, x, B, C, dd_dt, dd_A, trap, angle = torch.split(proj, self.sizes, dim=-1)
        x, z = x.unflatten(-1, (H, P)), z.unflatten(-1, (H, P))  # (..., H, P)
        dt = F.softplus(dd_dt + self.dt_bias)  # (..., H)
        A = -A_ACTIVATIONS[self.A_activation](dd_A).clamp(min=self.A_floor)  # (..., H), A <= -A_floor
        lam = torch.sigmoid(trap)  # (..., H)

        def bc(M, norm, bias):  # (..., R G N) -> (..., H, R, N): normalise over N, groups -> heads, + bias
            M = norm(M.unflatten(-1, (R, G, N))).transpose(-3, -2)  # (..., G, R, N)
            return M.repeat_interleave(H // G, dim=-3) + bias  # head h reads group h // (H / G)

        B, C = bc(B, self.B_norm, self.B_bias), bc(C, self.C_norm, self.C_bias)  # (..., H, R, N)
        rate = math.pi * torch.tanh(angle)  # (..., S): at most π radians per unit of Δ
        theta = F.pad(rate, (0, N // 2 - self.n_angles))[..., None, :].expand(*rate.shape[:-1], H, N // 2)
        if self.mimo:
            x, z = x.unsqueeze(-2) * self.mimo_x, z.unsqueeze(-2) * self.mimo_z  # (..., H, R, P)
        else:
            B, C = B.squeeze(-2), C.squeeze(-2)  # (..., H, N)
        return dict(x=x, z=z, dt=dt, A=A, lam=lam, B=B, C=C, theta=theta, angle=angle)

    def _out(self, y):
        """y (..., H, P) or (..., H, R, P) -> (..., d_model): MIMO's ranks summed with W_o, then out_proj."""
        if self.mimo:
            y = (y * self.mimo_o).sum(-2)  # (..., H, P)
        return self.out_proj(y.flatten(-2))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (b, L, d_model) -> (b, L, d_model), through ``mamba3`` (chunked: any L)."""
        Shapes("Mamba3").check("u", u, f"batch L {self.d_model}")
        s = self.ssm_inputs(u)
        y = mamba3(s["x"], s["dt"], s["A"], s["B"], s["C"], s["lam"], s["theta"], D=self.D, z=s["z"],
                   chunk_size=self.chunk_size, impl=self.impl)  # (b, L, H, [R,] P)
        return self._out(y)

    # ------------------------------------------------------------------ decoding

    def allocate_cache(self, batch: int, device=None, dtype=None) -> dict:
        """A fresh decoding cache (``ssm_edu.lm``'s block protocol), at position -1.

        "state": a ``Mamba3State`` of zeros (h (b, H, P, N), angle (b, H, N/2),
        k (b, H, [R,] N), x (b, H, [R,] P)), in float32 at least (float64 for a
        float64 model): no history and no β-term before the first token.
        """
        w = self.in_proj.weight
        device = w.device if device is None else device
        dtype = torch.promote_types(w.dtype if dtype is None else dtype, torch.float32)
        return {"state": Mamba3State.zeros(batch, self.nheads, self.headdim, self.d_state,
                                           self.rank if self.mimo else None, dtype=dtype, device=device)}

    # The step between the two projections as one Triton kernel (kernels/mamba3_block_step.py; SISO, float32
    # cache). Off by default: chapter 10 measures and explains the PyTorch step; the decode benchmark times the
    # fused one beside it (rows "mamba3-graph-fused"). Set True on a block (or pass fused=True) to use it.
    fused_step = False

    def step(self, u: torch.Tensor, cache: dict, fused: bool | None = None) -> torch.Tensor:
        """One token: u (b, d_model) -> (b, d_model); writes the next state into ``cache["state"]`` in place.

        ``fused``: the whole step between the two projections in one Triton kernel
        (``kernels/mamba3_block_step.py``), where the block and cache fit it (SISO, a float32
        cache), else the PyTorch step; None follows the block's ``fused_step``.
        """
        Shapes("Mamba3.step").check("u", u, f"batch {self.d_model}")
        proj = self.in_proj(u)
        if fused if fused is not None else self.fused_step:
            from .kernels import mamba3_block_step as kernel

            if kernel.supported(self, proj, cache["state"]):
                return self.out_proj(kernel.mamba3_block_step(self, proj, cache["state"]).flatten(-2))
        s = self.ssm_inputs(u, proj)
        y, new = mamba3_step(cache["state"], s["x"], s["dt"], s["A"], s["B"], s["C"], s["lam"], s["theta"],
                             D=self.D, z=s["z"])  # y (b, H, [R,] P)
        _write(cache["state"], new)
        return self._out(y)

    def extend(self, u: torch.Tensor, cache: dict) -> torch.Tensor:
        """A chunk u (b, l, d_model) after the positions ``cache`` holds -> (b, l, d_model); updates ``cache``.

        The chunked ``mamba3`` from the cached ``Mamba3State`` (its h, Φ and
        the previous token's k and x), returning the state at the chunk's end.
        """
        Shapes("Mamba3.extend").check("u", u, f"batch l {self.d_model}")
        s = self.ssm_inputs(u)
        y, new = mamba3(s["x"], s["dt"], s["A"], s["B"], s["C"], s["lam"], s["theta"], D=self.D, z=s["z"],
                        chunk_size=self.chunk_size, initial_state=cache["state"], return_final_state=True,
                        impl=self.impl)
        _write(cache["state"], new)
        return self._out(y)


def _write(state: Mamba3State, new: Mamba3State) -> None:
    """Copy a new ``Mamba3State`` into the cache's tensors (in place: a captured step keeps its addresses)."""
    for old, fresh in zip(state, new):
        old.copy_(fresh)


def mamba3_block(**kwargs):
    """A block factory for ``ssm_edu.lm.SequenceModel``: ``mamba3_block(d_state=64)(d_model) -> Mamba3``."""
    return lambda d_model: Mamba3(d_model, **kwargs)


# ---------------------------------------------------------------------- chapter 9: the cost of a decoding step


def mamba3_decode_cost(P: int, N: int, R: int = 1, state_bytes: int = 4, io_bytes: int = 2) -> dict[str, float]:
    """Arithmetic and memory traffic of one decoding step of one head (chapter 9's count).

    Floating-point operations (a multiply-add counts as 2):
        α h                         P N
        + β Σ_r x_{t-1,r} k_{t-1,r}ᵀ   2 R P N
        + γ Σ_r x_{t,r} k_{t,r}ᵀ       2 R P N
        y_r = h q_r, r = 1..R         2 R P N
    in all (1 + 6R) P N; the O(R (P + N)) work of rotations, scalings, the D
    skip and the gate is left out. Bytes: the P x N state read and written
    once (``state_bytes`` each: 4 for float32), plus the vectors of the step
    (``io_bytes`` each): x, y (R P each), B, C (R N each), and the cached
    k_{t-1}, x_{t-1} read and replaced (2 R (N + P)). The state does not
    grow with R; the work does, so the intensity (flops per byte) does.
    """
    state = P * N
    flops = (1 + 6 * R) * state
    bytes_state = 2 * state * state_bytes
    bytes_io = (2 * R * P + 2 * R * N + 2 * R * (N + P)) * io_bytes
    total = bytes_state + bytes_io
    return {"flops": flops, "bytes": total, "state_bytes": bytes_state, "intensity": flops / total,
            "state_size": state}


# ---------------------------------------------------------------- chapter 9: discretisation error, the explorer


def trapezoid_error(lam: float, dts, T: float = 10.0, a: float = -1.0) -> list[float]:
    """Largest error of Mamba-3's recurrence against the exact solution of h' = a h + sin t, h(0) = 0.

    One head, P = 1, N = 2 (one pair, no rotation), B = C = (1, 0), constant
    Δ, A = a and λ = ``lam``, input x_t = sin(t Δ), for 0 <= t Δ <= T; the exact
    solution is h(t) = (e^{a t} - cos t - a sin t) / (a² + 1). Returns
    max_t |h_t - h(t Δ)| for each Δ of ``dts``, computed in float64 through
    ``ssm_edu.mamba3``. λ = 1 (exponential Euler, Mamba-2) shrinks like Δ,
    λ = 1/2 (the trapezoid) like Δ².
    """
    f64 = torch.float64
    out = []
    for dt in dts:
        L = int(round(T / dt)) + 1
        t = torch.arange(L, dtype=f64) * dt  # (L,) times
        one = torch.ones(1, L, 1, dtype=f64)
        B = torch.zeros(1, L, 1, 2, dtype=f64)
        B[..., 0] = 1.0
        y = mamba3(torch.sin(t)[None, :, None, None], dt * one, a * one, B, B, lam * one,
                   torch.zeros(1, L, 1, 1, dtype=f64), impl="vectorized")[0, :, 0, 0]  # (L,)
        exact = (torch.exp(a * t) - torch.cos(t) - a * torch.sin(t)) / (a * a + 1)
        out.append((y - exact).abs().max().item())
    return out


_EXPLORER_BITS = torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(9))  # one fixed bit string


def rotation_readout(bits, angle_per_one: float, decay: float):
    """Parity by rotation, through ``mamba3``: the readout y_t and the angle Φ_t for a bit string.

    One head, P = 1, N = 2, λ = 1, Δ = 1: a start token writes k = (1, 0) into
    the state, every one turns the frame by ``angle_per_one`` radians, A = log(decay)
    < 0 shrinks the state. y_t = q_t·k_0 = decay^t cos Φ_t: with an angle of π
    per one its sign is the running parity of bits[:t + 1]. bits (L,) 0/1 ->
    y (L,), Φ (L,) (at the bits, after the start token).
    """
    f64 = torch.float64
    L = bits.shape[0] + 1
    x = torch.zeros(1, L, 1, 1, dtype=f64)
    x[:, 0] = 1.0  # only the start token has a value
    B = torch.zeros(1, L, 1, 2, dtype=f64)
    B[..., 0] = 1.0
    theta = torch.cat([torch.zeros(1), angle_per_one * bits.to(f64)])[None, :, None, None]  # (1, L, 1, 1)
    one = torch.ones(1, L, 1, dtype=f64)
    y = mamba3(x, one, math.log(decay) * one, B, B, one, theta, impl="vectorized")[0, 1:, 0, 0]
    return y, torch.cumsum(theta[0, 1:, 0, 0], 0)


def rotation_counter(x, modulus: int, decay: float = 1.0):
    """A hand-built Mamba-3 recurrence that counts ones modulo ``modulus`` (``ssm_edu.tasks`` layout).

    x (n, L) int64 tokens (a start token, then bits 0/1) -> (n, L) int64, the
    count of ones so far mod ``modulus``. One head, P = 1, N = 2 (one rotating
    pair), MIMO rank 2, λ = 1, Δ = 1, A = log(decay): only the start token
    has a value, so the state holds k_0 = (1, 0) turned back by every later
    one by 2π / modulus; the two ranks read it with q = (1, 0) and (0, 1),
    that is cos Φ_t and -sin Φ_t, and the angle gives the count. With decay 1
    it is exact at any length (the state's length never changes).
    """
    f64 = torch.float64
    n, L = x.shape
    v = torch.zeros(n, L, 1, 2, 1, dtype=f64)  # (n, L, H, R, P)
    v[:, 0] = 1.0  # only the start token has a value
    B = torch.zeros(n, L, 1, 2, 2, dtype=f64)  # (n, L, G, R, N)
    B[..., 0] = 1.0
    C = torch.zeros(n, L, 1, 2, 2, dtype=f64)
    C[:, :, 0, 0, 0], C[:, :, 0, 1, 1] = 1.0, 1.0  # rank 0 reads cos, rank 1 reads -sin
    one = torch.ones(n, L, 1, dtype=f64)
    theta = (2 * math.pi / modulus * (x == 1).to(f64))[..., None, None]  # (n, L, 1, 1) radians per one
    y = mamba3(v, one, math.log(decay) * one, B, C, one, theta, impl="vectorized")[:, :, 0, :, 0]  # (n, L, 2)
    angle = torch.atan2(-y[..., 1], y[..., 0])  # the angle turned since the start
    return torch.round(angle / (2 * math.pi / modulus)).long() % modulus


def rotation_figure(angle_per_one: float = 1.0, lam: float = 0.5, log10_rate: float = -3.0, axes=None):
    """Chapter 9's picture: parity by rotation (left, middle) and the trapezoid's accuracy (right).

    angle_per_one: the angle a one turns the state by, in units of π.
    lam: the trapezoid's λ for the right panel. log10_rate: log10 of -A Δ,
    the decay rate per step (the state shrinks by exp(A Δ) each step).
    """
    import matplotlib.pyplot as plt

    from .plots import PALETTE

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 1.6, 1.3]})
    bits, decay = _EXPLORER_BITS, math.exp(-(10.0 ** log10_rate))
    y, phi = rotation_readout(bits, math.pi * angle_per_one, decay)
    rho = y.new_tensor([decay]) ** torch.arange(1, len(bits) + 1)  # |state| at each step
    ax = axes[0]
    circle = torch.linspace(0, 2 * math.pi, 200)
    ax.plot(torch.cos(circle), torch.sin(circle), color="0.7", lw=1)
    ax.scatter(rho * torch.cos(phi), -rho * torch.sin(phi), c=range(len(bits)), cmap="viridis", s=18, zorder=3)
    ax.set_aspect("equal")
    ax.set_xlim(-1.2, 1.2)
    ax.set_ylim(-1.2, 1.2)
    ax.set_xlabel("Re (cos Φ) [state units]")
    ax.set_ylabel("Im (-sin Φ) [state units]")
    ax.set_title(f"the state, step by step\n{angle_per_one:.2f}π per one")
    target = 1 - 2 * (torch.cumsum(bits, 0) % 2).to(y.dtype)  # +1 even, -1 odd
    right = int((torch.sign(y) == target).sum())
    ax = axes[1]
    ax.plot(range(len(bits)), y, "o-", ms=3, color=PALETTE[0], label="readout y_t")
    ax.plot(range(len(bits)), target, "x", color=PALETTE[3], label="parity target ±1")
    ax.set_xlabel("position t [tokens]")
    ax.set_ylabel("y_t (sign = parity)")
    ax.set_ylim(-1.3, 1.3)
    ax.set_title(f"readout: right sign at {right} of {len(bits)} positions\n(decay exp(AΔ) = {decay:.4f} per step)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax = axes[2]
    dts = [0.2, 0.1, 0.05, 0.025]
    for value, style, color in ((1.0, "o-", PALETTE[3]), (lam, "s--", PALETTE[0])):
        label = "λ = 1 (Euler, Mamba-2)" if style == "o-" else f"λ = {value:.2f} (slider)"
        ax.loglog(dts, trapezoid_error(value, dts), style, color=color, label=label)
    ax.set_xticks(dts, [str(d) for d in dts])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.yaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("step Δ [s]")
    ax.set_ylabel("max error [state units]")
    ax.set_title("h' = -h + sin t: error against Δ")
    ax.legend()
    return axes


def rotation_explorer(angle_per_one: float = 1.0, lam: float = 0.5, log10_rate: float = -3.0):
    """Chapter 9: the angle per one, the decay and λ; parity by rotation, and the trapezoid's error."""
    import ipywidgets as W

    from .widgets import _explorer, _slider

    return _explorer(lambda a, l, r: rotation_figure(a, l, r),
                     _slider(W.FloatSlider, angle_per_one, 0.0, 1.0, 0.02, "angle per one [π]"),
                     _slider(W.FloatSlider, lam, 0.0, 1.0, 0.05, "λ"),
                     _slider(W.FloatSlider, log10_rate, -4.0, 0.0, 0.25, "log10(-AΔ)"))
