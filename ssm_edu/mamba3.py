"""Mamba-3's scan: exponential-trapezoidal steps, a rotated state, MIMO (chapter 9).

Symbols -> code:  x_t (v_t) -> x,  Δ_t -> dt,  A_t (data-dependent, < 0) -> A,
λ_t (the trapezoid's mix, in [0, 1]) -> lam,  θ_t (angular rates) -> theta,
B_t, C_t -> B, C,  k_t = Rot(Φ_t) B_t -> k,  q_t = Rot(Φ_t) C_t -> q,
Φ_t = Φ_{-1} + Σ_{r<=t} θ_r Δ_r (cumulative angles) -> angle,
α_t, β_t, γ_t -> alpha, beta, gamma,  h_t -> h,  D -> D,  gate -> z,
Q -> chunk_size.
Shapes: b batch, L length, H heads, P head dim, G groups of B and C (head h
reads group h // (H // G)), N state size (even), N/2 rotation angles, R the
MIMO rank, c chunks of Q steps.

Per head, with the state h_t a P x N matrix (SISO):

    α_t = exp(Δ_t A_t)     β_t = (1 - λ_t) Δ_t α_t     γ_t = λ_t Δ_t
    h_t = α_t h_{t-1} + β_t x_{t-1} k_{t-1}ᵀ + γ_t x_t k_tᵀ
    y_t = h_t q_t + D x_t,   then y_t ⊙ SiLU(z_t)

Rot(Φ) turns each pair (2i, 2i+1) of a vector by the angle Φ[i]:
(u, v) -> (u cos Φ - v sin Φ, u sin Φ + v cos Φ). The t-1 term is zero at
t = 0 unless an initial state supplies x_{-1} and k_{-1}. λ = 1 drops it and
gives Mamba-2's exponential-Euler step (with a data-dependent A); θ = 0 turns
the rotations off.

MIMO (rank R): x_t, y_t, z_t are R x P per head and B_t, C_t are R x N per
group; the state is still P x N. The update sums the R outer products,
Σ_r x_{t,r} k_{t,r}ᵀ, and each rank reads the state with its own query:
y_{t,r} = h_t q_{t,r} + D x_{t,r}. R = 1 is SISO.

Unrolled, the recurrence is a masked, attention-like product (the parallel form):

    y_t = Σ_{s<=t} M[t, s] (q_tᵀ k_s) x_s
    M[t, s] = exp(Σ_{r=s+1..t} Δ_r A_r) w[t, s],
    w[t, t] = γ_t,   w[t, s] = γ_s + (1 - λ_{s+1}) Δ_{s+1}  (s < t)

that is Mamba-2's 1-semiseparable mask times a width-2 (bidiagonal) factor.

The rotation is a complex number in disguise: with the pair (2i, 2i+1) of h,
B and C read as one complex entry, the same recurrence is the complex
diagonal SSM g_t = e^{Δ_t(A_t - iθ_t)} g_{t-1} + ... (``mamba3_complex_naive``);
Rot(Φ_t)ᵀ Rot(Φ_s) = Rot(Φ_s - Φ_t) is what makes the two agree.

The state carried from one call to the next (``Mamba3State``; also the decoding
cache of ``mamba3_step``) is (h, angle, k, x): h_{t}, Φ_t (reduced to
[0, 2π)), the rotated k_t and x_t of the last step, which the next step's
β-term needs.

* ``naive``: one step of the recurrence per loop iteration (the specification).
* ``quadratic``: the parallel form over the whole sequence, O(L²) per head.
* ``vectorized``: chunked. The parallel form inside chunks of Q steps, a state
  carried from chunk to chunk.
* ``triton``: for SISO heads in float32 or bfloat16, SSD's kernels with a
  rotation kernel before them and a correction on the diagonal after
  (``kernels/mamba3_ssd.py``: below the diagonal the trapezoid's weight
  depends on the input's step alone, as SSD's does); otherwise the chunked
  algorithm in one kernel (``kernels/mamba3.py``), its gradients in Triton too
  (``kernels/mamba3_bwd.py``). ``kernels/mamba3.py``'s ``SISO_PATH`` picks.
  ``mamba3_step`` has a Triton decoding step (``kernels/mamba3_step.py``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._dispatch import dispatch, float32_kernel
from ._validate import Shapes, check_dtype, check_same_device
from .numerics import accumulation_dtype
from .ssd import segsum

__all__ = [
    "mamba3",
    "mamba3_step",
    "Mamba3State",
    "mamba3_naive",
    "mamba3_quadratic",
    "mamba3_vectorized",
    "mamba3_complex_naive",
    "mamba3_mask",
    "trapezoid_weights",
    "rotate_pairs",
    "cumulative_angle",
]

_FLOAT = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
TWO_PI = 2 * math.pi


class Mamba3State(NamedTuple):
    """What one step hands to the next: the decoding cache and ``initial_state``.

    h: (batch, H, P, N) the state h_t.
    angle: (batch, H, N/2) the cumulative angle Φ_t, reduced to [0, 2π).
    k: (batch, H, N) SISO or (batch, H, R, N) MIMO, the rotated k_t = Rot(Φ_t) B_t.
    x: (batch, H, P) SISO or (batch, H, R, P) MIMO, the input x_t.

    All zeros is the start of a sequence (no history, no β-term at t = 0).
    """

    h: torch.Tensor
    angle: torch.Tensor
    k: torch.Tensor
    x: torch.Tensor

    @classmethod
    def zeros(cls, batch, H, P, N, R=None, dtype=torch.float32, device=None):
        """The empty cache; ``R=None`` for SISO shapes, an int for MIMO."""
        rank = () if R is None else (R,)
        z = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
        return cls(z(batch, H, P, N), z(batch, H, N // 2), z(batch, H, *rank, N), z(batch, H, *rank, P))


# ---------------------------------------------------------------- the pieces the chapter shows


def trapezoid_weights(dt, A, lam):
    """The exponential-trapezoidal coefficients (α, β, γ) of one step, elementwise.

    α = exp(Δ A) decays the state; β = (1 - λ) Δ α weighs the previous input
    (it is decayed by this step too); γ = λ Δ weighs the current input.
    λ = 1 is exponential Euler (Mamba-2): β = 0, γ = Δ. Any broadcastable shapes.
    """
    alpha = torch.exp(dt * A)
    return alpha, (1 - lam) * dt * alpha, lam * dt


def rotate_pairs(v, angle):
    """Turn each pair (v[..., 2i], v[..., 2i+1]) by angle[..., i].

    v (..., N) with N even, angle (..., N/2) broadcastable against
    v[..., ::2] -> (..., N): (u, w) -> (u cos - w sin, u sin + w cos).
    """
    u, w = v[..., 0::2], v[..., 1::2]  # (..., N/2)
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([u * c - w * s, u * s + w * c], dim=-1).flatten(-2)


def cumulative_angle(dt, theta, angle0=None):
    """Φ_t = Φ_{-1} + Σ_{r<=t} θ_r Δ_r.

    dt (b, L, H), theta (b, L, H, N/2), angle0 (b, H, N/2) or None -> (b, L, H, N/2).
    """
    phi = torch.cumsum(theta * dt[..., None], dim=1)
    return phi if angle0 is None else phi + angle0[:, None]


def mamba3_mask(dt, A, lam):
    """The parallel form's mask M[t, s] = exp(Σ_{r=s+1..t} Δ_r A_r) w[t, s].

    dt, A, lam (b, L, H) -> M (b, H, L, L), zero above the diagonal, with the
    two-term weights w[t, t] = λ_t Δ_t and w[t, s] = λ_s Δ_s + (1 - λ_{s+1}) Δ_{s+1}
    below it.
    """
    decay = torch.exp(segsum((dt * A).transpose(1, 2)))  # (b, H, L, L), Mamba-2's mask
    gamma, scale = _gamma_scale(dt, lam)  # (b, L, H)
    L = dt.shape[1]
    t = torch.arange(L, device=dt.device)
    below = (t[:, None] > t[None, :]).to(dt.dtype)  # (L, L)
    diag = (t[:, None] == t[None, :]).to(dt.dtype)
    w = below * scale.transpose(1, 2)[:, :, None, :] + diag * gamma.transpose(1, 2)[:, :, None, :]  # (b, H, L, L)
    return decay * w


def _gamma_scale(dt, lam):
    """γ_s = λ_s Δ_s and the off-diagonal weight γ_s + (1 - λ_{s+1}) Δ_{s+1} (the second term 0 at s = L-1)."""
    gamma = lam * dt  # (b, L, H)
    shifted = F.pad(((1 - lam) * dt)[:, 1:], (0, 0, 0, 1))  # (1 - λ_{s+1}) Δ_{s+1}
    return gamma, gamma + shifted


# ---------------------------------------------------------------- shared plumbing


def _heads(B, H):
    """Groups -> heads: (b, ..., G, R, N) with the group axis at 2 -> (b, ..., H, R, N)."""
    return B.repeat_interleave(H // B.shape[2], dim=2)


def _ranked(x, B, C, z):
    """SISO tensors get a rank axis R = 1 after the head/group axis, so that one code path serves both."""
    siso = x.dim() == 4
    if siso:
        x, B, C = x[:, :, :, None], B[:, :, :, None], C[:, :, :, None]
        z = None if z is None else z[:, :, :, None]
    return x, B, C, z, siso


def _outer(x, k):
    """Σ_r x_r k_rᵀ: x (b, H, R, P), k (b, H, R, N) -> (b, H, P, N)."""
    return torch.einsum("bhrp,bhrn->bhpn", x, k)


def _start(initial_state, x, N):
    """The state before t = 0 as (h, angle, k, x) with a rank axis; zeros where nothing is given.

    x (b, L, H, R, P) (ranked); initial_state None, a tensor h (b, H, P, N), or
    a ``Mamba3State`` / 4-tuple in SISO or MIMO shapes.
    """
    b, _, H, R, P = x.shape
    zeros = Mamba3State.zeros(b, H, P, N, R, dtype=x.dtype, device=x.device)
    if initial_state is None:
        return zeros
    if isinstance(initial_state, torch.Tensor):
        return zeros._replace(h=initial_state)
    h, angle, k, xp = initial_state
    if k.dim() == 3:  # SISO shapes
        k, xp = k[:, :, None], xp[:, :, None]
    return Mamba3State(h, angle, k, xp)


def _skip_and_gate(y, x, D=None, z=None):
    """y + D x, then ⊙ SiLU(z). y, x, z (b, L, H, R, P), D (H,) or (H, P)."""
    if D is not None:
        y = y + x * (D[:, None, None] if D.dim() == 1 else D[:, None, :])
    if z is not None:
        y = y * F.silu(z)
    return y


def _finish(y, h, angle, k, x, siso, return_final_state):
    """Drop the rank axis again for SISO; the final angle is reduced to [0, 2π)."""
    if siso:
        y, k, x = y[:, :, :, 0], k[:, :, 0], x[:, :, 0]
    if not return_final_state:
        return y
    return y, Mamba3State(h, torch.remainder(angle, TWO_PI), k, x)


# ---------------------------------------------------------------- naive: the specification


def mamba3_naive(x, dt, A, B, C, lam, theta, D=None, z=None, initial_state=None, return_final_state=False):
    """The specification: one step of the recurrence per loop iteration.

    SISO: x (b, L, H, P), B, C (b, L, G, N); MIMO: x (b, L, H, R, P),
    B, C (b, L, G, R, N). dt, A, lam (b, L, H), theta (b, L, H, N/2) ->
    y shaped like x (and a ``Mamba3State`` when asked).
    """
    x, B, C, z, siso = _ranked(x, B, C, z)  # (b, L, H, R, P), (b, L, G, R, N)
    H = x.shape[2]
    B, C = _heads(B, H), _heads(C, H)  # (b, L, H, R, N)
    h, angle, k_prev, x_prev = _start(initial_state, x, B.shape[-1])
    ys = []
    for t in range(x.shape[1]):
        angle = angle + theta[:, t] * dt[:, t, :, None]  # Φ_t (b, H, N/2)
        k = rotate_pairs(B[:, t], angle[:, :, None])  # k_t (b, H, R, N)
        q = rotate_pairs(C[:, t], angle[:, :, None])  # q_t
        alpha, beta, gamma = (w[..., None, None] for w in trapezoid_weights(dt[:, t], A[:, t], lam[:, t]))
        h = alpha * h + beta * _outer(x_prev, k_prev) + gamma * _outer(x[:, t], k)  # (b, H, P, N)
        ys.append(torch.einsum("bhpn,bhrn->bhrp", h, q))  # y_{t,r} = h_t q_{t,r}
        k_prev, x_prev = k, x[:, t]
    y = _skip_and_gate(torch.stack(ys, dim=1), x, D, z)  # (b, L, H, R, P)
    return _finish(y, h, angle, k_prev, x_prev, siso, return_final_state)


def mamba3_step(state, x, dt, A, B, C, lam, theta, D=None, z=None, impl="auto"):
    """One decoding step: the recurrence advanced by one token, for generation.

    state: a ``Mamba3State`` (h, angle, k, x) of the previous token, or None
        at the start of a sequence. Its k and x feed this step's β-term, its
        angle is Φ_{t-1}.
    x: (b, H, P) SISO or (b, H, R, P) MIMO; dt, A, lam (b, H); B, C (b, G, N)
        or (b, G, R, N); theta (b, H, N/2); D (H,) or (H, P); z like x.
    impl: ``"naive"`` (the loop of ``mamba3_naive`` for one token),
        ``"triton"`` (``kernels/mamba3_step.py``, float32 / bfloat16 / float16)
        or ``"auto"``.
    Returns (y, new_state): y like x, new_state (h_t, Φ_t mod 2π, k_t, x_t) in
    float32 (float64 for float64 x). Feeding a sequence token by token
    reproduces ``mamba3`` and its final state.
    """
    op = "mamba3_step"
    shapes = Shapes(op)
    _check_shapes(op, shapes, "batch", x, dt, A, B, C, lam, theta, D, z, state, "state")
    tensors = dict(x=x, dt=dt, A=A, B=B, C=C, lam=lam, theta=theta, D=D, z=z)
    check_same_device(op, **tensors, **({} if state is None or isinstance(state, torch.Tensor) else
                                        dict(zip(("h", "angle", "k", "x_prev"), state))))
    for name, t in tensors.items():
        if t is not None:
            check_dtype(op, name, t, _FLOAT)
    fn = dispatch(op, impl, (x, dt, A, B, C, lam, theta, D, z), naive=_step_naive, vectorized=_step_naive,
                  triton="mamba3_step:mamba3_step_triton")
    fn = float32_kernel(op, impl, fn, double=x.dtype == torch.float64, what="float64 x", fallback=_step_naive)
    if isinstance(state, torch.Tensor):  # h alone: no previous token, angle 0
        s = Mamba3State.zeros(x.shape[0], x.shape[1], x.shape[-1], B.shape[-1],
                              None if x.dim() == 3 else x.shape[2], dtype=state.dtype, device=state.device)
        state = s._replace(h=state)
    return fn(state, x, dt, A, B, C, lam, theta, D=D, z=z)


def _step_naive(state, x, dt, A, B, C, lam, theta, D=None, z=None):
    """One step as the scan of length 1 started from the cache (``mamba3_naive``)."""
    work = accumulation_dtype(x.dtype)
    if state is not None:
        state = Mamba3State(*(t.to(work) for t in state))
    seq = [None if t is None else t.to(work)[:, None] for t in (x, dt, A, B, C, lam, theta, z)]  # length 1
    y, new = mamba3_naive(*seq[:7], D=None if D is None else D.to(work), z=seq[7], initial_state=state,
                          return_final_state=True)
    return y[:, 0].to(x.dtype), new


def mamba3_complex_naive(x, dt, A, B, C, lam, theta, D=None, z=None):
    """The same scan with a complex diagonal state instead of rotations (a check, not an impl).

    Pairs (2i, 2i+1) of B and C become complex numbers b̃ = B_{2i} + i B_{2i+1};
    the state g_t (b, H, P, N/2) is complex and
        g_t = ã_t g_{t-1} + (1 - λ_t) Δ_t ã_t x_{t-1} b̃_{t-1}ᵀ + λ_t Δ_t x_t b̃_tᵀ,
        ã_t = exp(Δ_t (A_t - i θ_t)),       y_t = Re(g_t conj(c̃_t)) + D x_t.
    No rotation of B or C anywhere: the angles live in the decay's phase.
    Same shapes as ``mamba3_naive`` (SISO or MIMO), starting from zero.
    """
    x, B, C, z, siso = _ranked(x, B, C, z)
    b, L, H, R, P = x.shape
    cplx = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    Bc, Cc = (torch.complex(M[..., 0::2], M[..., 1::2]).to(cplx) for M in (_heads(B, H), _heads(C, H)))  # (b, L, H, R, N/2)
    xc = x.to(cplx)
    g = torch.zeros(b, H, P, Bc.shape[-1], dtype=cplx, device=x.device)  # (b, H, P, N/2)
    b_prev, x_prev = torch.zeros_like(Bc[:, 0]), torch.zeros_like(xc[:, 0])
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t, :, None] * (A[:, t, :, None] - 1j * theta[:, t]))  # ã_t (b, H, N/2)
        beta = ((1 - lam[:, t]) * dt[:, t])[:, :, None, None] * decay[:, :, None, :]  # (b, H, 1, N/2)
        gamma = (lam[:, t] * dt[:, t])[:, :, None, None]
        g = decay[:, :, None, :] * g + beta * _outer(x_prev, b_prev) + gamma * _outer(xc[:, t], Bc[:, t])
        ys.append(torch.einsum("bhpn,bhrn->bhrp", g, Cc[:, t].conj()).real)
        b_prev, x_prev = Bc[:, t], xc[:, t]
    y = _skip_and_gate(torch.stack(ys, dim=1), x, D, z)
    return y[:, :, :, 0] if siso else y


# ---------------------------------------------------------------- quadratic: the parallel form


def _rotated(B, C, dt, theta, angle0, H):
    """k, q (b, L, H, R, N) and Φ (b, L, H, N/2): B and C turned by the cumulative angles."""
    phi = cumulative_angle(dt, theta, angle0)  # (b, L, H, N/2)
    return rotate_pairs(_heads(B, H), phi[:, :, :, None]), rotate_pairs(_heads(C, H), phi[:, :, :, None]), phi


def _carried_in(h0, x_prev, k_prev, dt, lam):
    """h_{-1} plus the β-term of step 0 without its α_0: both then decay alike.

    (b, H, P, N): h_{-1} + (1 - λ_0) Δ_0 Σ_r x_{-1,r} k_{-1,r}ᵀ.
    """
    return h0 + ((1 - lam[:, 0]) * dt[:, 0])[..., None, None] * _outer(x_prev, k_prev)


def mamba3_quadratic(x, dt, A, B, C, lam, theta, D=None, z=None, initial_state=None, return_final_state=False):
    """The parallel form Y = (M ∘ Q Kᵀ) X over the whole sequence; same arguments as ``mamba3_naive``.

    Materialises (b, H, L, R, L, R): attention-like, O(L²) per head.
    """
    x, B, C, z, siso = _ranked(x, B, C, z)
    H = x.shape[2]
    h0, angle0, k_prev, x_prev = _start(initial_state, x, B.shape[-1])
    k, q, phi = _rotated(B, C, dt, theta, angle0, H)  # (b, L, H, R, N)
    M = mamba3_mask(dt, A, lam)  # (b, H, L, L)
    scores = torch.einsum("bthin,bshjn->bhtisj", q, k) * M[:, :, :, None, :, None]  # (b, H, L, R, L, R)
    y = torch.einsum("bhtisj,bshjp->bthip", scores, x)  # (b, L, H, R, P)
    # what was there before t = 0 reaches step t decayed by exp(Σ_{r<=t} Δ_r A_r)
    S0 = _carried_in(h0, x_prev, k_prev, dt, lam)  # (b, H, P, N)
    decay = torch.exp(torch.cumsum(dt * A, dim=1))  # (b, L, H)
    y = y + torch.einsum("bthin,bhpn,bth->bthip", q, S0, decay)
    y = _skip_and_gate(y, x, D, z)
    if not return_final_state:
        return _finish(y, None, None, k[:, -1], x[:, -1], siso, False)
    # h_{L-1} is what the last row of M reads (y_{L-1} = h_{L-1} q_{L-1}), plus the decayed start
    last = M[:, :, -1, :]  # (b, H, L)
    h = torch.einsum("bhs,bshjp,bshjn->bhpn", last, x, k) + decay[:, -1, :, None, None] * S0
    return _finish(y, h, phi[:, -1], k[:, -1], x[:, -1], siso, True)


# ---------------------------------------------------------------- vectorized: chunked


def mamba3_vectorized(x, dt, A, B, C, lam, theta, D=None, z=None, chunk_size=64, initial_state=None,
                      return_final_state=False):
    """Chunked: the parallel form inside chunks of Q steps, a state carried across chunks.

    Same arguments as ``mamba3_naive`` plus ``chunk_size``. Any L works (the
    last chunk is padded with Δ = 0 steps, which change nothing) and the
    result does not depend on the chunk size. Within chunk c, with
    a_cum the chunk's running sum of Δ A and S_c the state entering it:

        y_t = Σ_{s<=t in c} exp(a_cum_t - a_cum_s) w[t, s] (q_tᵀ k_s) x_s
              + exp(a_cum_t) S_c q_t
        S_{c+1} = exp(a_cum_last) S_c + Σ_{s in c} exp(a_cum_last - a_cum_s) w_s x_s k_sᵀ

    where w_s = γ_s + (1 - λ_{s+1}) Δ_{s+1} looks one step past the chunk's
    end: the β-term of the next chunk's first step is folded into S_{c+1}.
    """
    x, B, C, z, siso = _ranked(x, B, C, z)
    b, L, H, R, P = x.shape
    Q = chunk_size
    h0, angle0, k_prev, x_prev = _start(initial_state, x, B.shape[-1])
    k, q, phi = _rotated(B, C, dt, theta, angle0, H)  # (b, L, H, R, N)
    gamma, scale = _gamma_scale(dt, lam)  # (b, L, H)
    S = _carried_in(h0, x_prev, k_prev, dt, lam)  # (b, H, P, N)
    # pad to whole chunks (Δ = 0: decay 1, weight 0) and cut: (b, c, Q, ...)
    pad = -L % Q
    xc, kc, qc, ac, gc, sc = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)).unflatten(1, (-1, Q))
                              for t in (x, k, q, dt * A, gamma, scale))
    acum = torch.cumsum(ac, dim=2)  # (b, c, Q, H): short sums, within one chunk
    t = torch.arange(Q, device=x.device)
    causal = (t[:, None] >= t[None, :])[..., None]  # (Q_t, Q_s, 1)
    diff = acum[:, :, :, None, :] - acum[:, :, None, :, :]  # (b, c, Q_t, Q_s, H)
    decay = torch.exp(diff.masked_fill(~causal, -torch.inf))
    w = torch.where((t[:, None] > t[None, :])[..., None], sc[:, :, None], gc[:, :, None] * (t[:, None] == t[None, :])[..., None])
    W = (decay * w).permute(0, 1, 4, 2, 3)  # (b, c, H, Q_t, Q_s)
    scores = torch.einsum("bcthin,bcshjn->bchtisj", qc, kc) * W[:, :, :, :, None, :, None]
    y = torch.einsum("bchtisj,bcshjp->bcthip", scores, xc)  # inside each chunk, from a zero state
    to_end = torch.exp(acum[:, :, -1:] - acum) * sc  # (b, c, Q, H)
    states = torch.einsum("bcsh,bcshjp,bcshjn->bchpn", to_end, xc, kc)  # each chunk's state from zero
    chunk_decay = torch.exp(acum[:, :, -1])  # (b, c, H)
    S_in = []
    for ci in range(xc.shape[1]):  # the carried state: one small step per chunk
        S_in.append(S)
        S = chunk_decay[:, ci, :, None, None] * S + states[:, ci]
    S_in = torch.stack(S_in, dim=1)  # (b, c, H, P, N)
    y = y + torch.einsum("bcthin,bchpn,bcth->bcthip", qc, S_in, torch.exp(acum))
    y = _skip_and_gate(y.flatten(1, 2)[:, :L], x, D, z)
    return _finish(y, S, phi[:, -1], k[:, -1], x[:, -1], siso, return_final_state)


# ---------------------------------------------------------------- public entry point


def sweep_log(device: str | None = None) -> dict | None:
    """The newest ``book/data/benchmarks/logs/sweep_mamba3-<gpu>.json`` (``benchmarks/sweep_mamba3.py``) measured
    on a GPU, never a dry run's; of ``device`` when given. None where none is stored (a copy of ``ssm_edu``
    installed without the book's data has none)."""
    from .results import DATA, newest_log

    return newest_log(DATA / "logs", "sweep_mamba3-*.json", lambda doc: not doc.get("dry_run"), device)


def _check_shapes(op, shapes, lead, x, dt, A, B, C, lam, theta, D, z, state, state_name):
    """Shapes shared by the scan (``lead`` = "batch L") and the step (``lead`` = "batch")."""
    spec = shapes.check("x", x, f"{lead} H P", f"{lead} H R P")
    mimo = "R" in spec
    for name, t in (("dt", dt), ("A", A), ("lam", lam)):
        shapes.check(name, t, f"{lead} H")
    shapes.check("B", B, f"{lead} G R N" if mimo else f"{lead} G N")
    shapes.check("C", C, f"{lead} G R N" if mimo else f"{lead} G N")
    if "L" in lead.split():
        shapes.nonempty("L")
    _check_heads_groups(op, shapes, B)
    _check_even(op, shapes, B)
    shapes.check("theta", theta, f"{lead} H N/2")
    if D is not None:
        shapes.check("D", D, "H", "H P")
    if z is not None:
        shapes.check("z", z, spec)
    if state is not None:
        _check_state(op, shapes, state, state_name, mimo)


def _check_heads_groups(op, shapes, B):
    shapes.nonempty("H", "G")
    if shapes["H"] % shapes["G"]:
        raise ValueError(f"{op}: the number of heads H = {shapes['H']} must be a multiple of the number of "
                         f"groups G = {shapes['G']} of B and C; got B of shape {tuple(B.shape)}")


def _check_even(op, shapes, B):
    if shapes["N"] % 2:
        raise ValueError(f"{op}: the state size N must be even (its entries are rotated in pairs); "
                         f"got B of shape {tuple(B.shape)} with N = {shapes['N']}")
    shapes.sizes["N/2"] = shapes["N"] // 2


def _check_state(op, shapes, state, name, mimo):
    if isinstance(state, torch.Tensor):
        shapes.check(name, state, "batch H P N")
        return
    if not isinstance(state, (tuple, list)) or len(state) != 4:
        raise ValueError(f"{op}: {name} must be None, a tensor h (batch, H, P, N) or a Mamba3State "
                         f"(h, angle, k, x); got {type(state).__name__}"
                         + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else ""))
    h, angle, k, xp = state
    shapes.check(f"{name}.h", h, "batch H P N")
    shapes.check(f"{name}.angle", angle, "batch H N/2")
    shapes.check(f"{name}.k", k, "batch H R N" if mimo else "batch H N")
    shapes.check(f"{name}.x", xp, "batch H R P" if mimo else "batch H P")
    for part, t in zip(("h", "angle", "k", "x"), state):
        check_dtype(op, f"{name}.{part}", t, _FLOAT)


def mamba3(x, dt, A, B, C, lam, theta, D=None, z=None, chunk_size=64, initial_state=None,
           return_final_state=False, impl="auto"):
    """The Mamba-3 scan (API.md): exponential-trapezoidal steps with a rotated state.

    Args:
        x: (batch, L, H, P) SISO, or (batch, L, H, R, P) MIMO of rank R.
        dt: (batch, L, H) steps Δ > 0.
        A: (batch, L, H) data-dependent decay rates, A < 0.
        B, C: (batch, L, G, N) SISO or (batch, L, G, R, N) MIMO, N even;
            H % G == 0 and head h reads group h // (H // G).
        lam: (batch, L, H) trapezoid mix λ in [0, 1] (1: exponential Euler).
        theta: (batch, L, H, N/2) angular rates; pair i of B_t and C_t turns by
            Φ_t[i] = Φ_{-1}[i] + Σ_{r<=t} θ_r[i] Δ_r.
        D: (H,) or (H, P) skip connection, or None.
        z: gate shaped like x: the output is multiplied by SiLU(z).
        chunk_size: Q of the chunked impls (``vectorized``, ``triton``); the
            result does not depend on it, and L need not be a multiple of it.
        initial_state: None (start from nothing), a tensor h_{-1}
            (batch, H, P, N), or a ``Mamba3State`` (h, angle, k, x) from a
            previous call or from ``mamba3_step``: its k and x give the β-term
            of step 0, its angle is Φ_{-1}.
        return_final_state: also return the ``Mamba3State`` after the last step.
        impl: ``"naive"`` (loop), ``"quadratic"`` (the parallel masked form),
            ``"vectorized"`` (chunked, PyTorch), ``"triton"`` (float32 /
            bfloat16 / float16; differentiable) or ``"auto"``.
    Returns:
        y shaped like x, in x's dtype; with ``return_final_state``, (y, state)
        where the state is in float32 (float64 for float64 x): the angles and
        the state are a decoding cache, kept at the precision of the recurrence.
    """
    op = "mamba3"
    fn = dispatch(op, impl, (x, dt, A, B, C, lam, theta, D, z), naive=mamba3_naive, quadratic=mamba3_quadratic,
                  vectorized=mamba3_vectorized, triton="mamba3:mamba3_triton")
    shapes = Shapes(op)
    _check_shapes(op, shapes, "batch L", x, dt, A, B, C, lam, theta, D, z, initial_state, "initial_state")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be an int >= 1; got {chunk_size!r}")
    tensors = dict(x=x, dt=dt, A=A, B=B, C=C, lam=lam, theta=theta, D=D, z=z)
    state = {} if initial_state is None else (
        dict(initial_state=initial_state) if isinstance(initial_state, torch.Tensor)
        else {f"initial_state.{p}": t for p, t in zip(("h", "angle", "k", "x"), initial_state)})
    check_same_device(op, **tensors, **state)
    for name, t in tensors.items():
        if t is not None:
            check_dtype(op, name, t, _FLOAT)
    if isinstance(initial_state, torch.Tensor):
        check_dtype(op, "initial_state", initial_state, _FLOAT)
    work = accumulation_dtype(x.dtype)
    if initial_state is not None:
        initial_state = (initial_state.to(work) if isinstance(initial_state, torch.Tensor)
                         else Mamba3State(*(t.to(work) for t in initial_state)))
    kwargs = dict(D=D, z=z, initial_state=initial_state, return_final_state=bool(return_final_state))
    fn = float32_kernel(op, impl, fn, double=x.dtype == torch.float64, what="float64 x", fallback=mamba3_vectorized)
    if fn not in (mamba3_naive, mamba3_quadratic, mamba3_vectorized):  # the Triton kernel
        return fn(x, dt, A, B, C, lam, theta, chunk_size=chunk_size, **kwargs)
    cast = {k: (v.to(work) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    if fn is mamba3_vectorized:
        cast["chunk_size"] = chunk_size
    out = fn(*(t.to(work) for t in (x, dt, A, B, C, lam, theta)), **cast)
    if return_final_state:
        return out[0].to(x.dtype), out[1]
    return out.to(x.dtype)
