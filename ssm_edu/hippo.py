"""HiPPO: memory as online projection onto orthogonal polynomials (chapter 4).

Symbols -> code:  f (the input signal) -> u,  c(t) (the coefficients, the
state) -> c,  A, B -> A, B,  Δ -> dt,  ω (the measure) -> measure,
g_n (the basis functions) -> the columns of ``hippo_basis``.
Shapes: N state (number of coefficients), L length, M evaluation points,
... any batch of signals.

HiPPO keeps, at every time t, the N coefficients of the best approximation of
the history f(s), s <= t, in an orthonormal basis {g_n} of the weighted space
L2(ω_t). For the measures below the coefficients obey a linear ODE

    c'(t) = A c(t) + B f(t)                    (LTI measures)
    c'(t) = (1/t) (A c(t) + B f(t))            ("legs_scaled", the original LegS)

with the (A, B) that ``hippo`` returns. Written with the age a = t - s >= 0 of
a past input, the approximation is f(t - a) ≈ Σ_n c_n(t) g_n(a):

    measure       window of the past           g_n(a)
    legt          0 <= a <= 1 (uniform)        √(2n+1) P_n(1 - 2a)
    legs (LTI)    a >= 0, weight e^{-a}        √(2n+1) P_n(2e^{-a} - 1)
    legs_scaled   0 <= s <= t (uniform)        √(2n+1) P_n(1 - 2r),  r = a/t
    lagt          a >= 0 (whole past)          L_n(a) e^{-a/2}
    fout          0 <= a <= 1 (uniform)        1, √2 cos(2πma), √2 sin(2πma)

P_n are the Legendre polynomials on [-1, 1], L_n the Laguerre polynomials.
Conventions are the HiPPO paper's (Gu et al., 2020) with unit windows; see
``hippo`` for the differences from the S4 code.

Bad input (a wrong shape or dtype, tensors on different devices, an unknown
measure, N or L < 1) raises ValueError or TypeError before any work; Δ and
the ages must be finite (ValueError). NaN and inf in a signal or a state are
not checked for (the check would cost a GPU synchronisation per call): they
propagate into every later state (and, through the FFT of the vectorized
memory, into every state of that signal).
"""

from __future__ import annotations

import math
import numbers

import torch

from ._dispatch import dispatch
from ._validate import Shapes, as_dt, check_dtype, check_positive
from .discretize import METHODS, discretize
from .numerics import accumulation_dtype

__all__ = [
    "MEASURES",
    "MEMORY_MEASURES",
    "hippo",
    "hippo_naive",
    "hippo_vectorized",
    "hippo_basis",
    "hippo_reconstruct",
    "hippo_memorize",
    "hippo_memorize_naive",
    "hippo_memorize_vectorized",
    "hippo_test_signal",
    "sample_ages",
    "hippo_rmse",
]

#: The measures ``hippo`` builds (A, B) for.
MEASURES = ("legs", "legt", "lagt", "fout")
#: The memories ``hippo_memorize`` runs: the LTI measures, and the original time-varying LegS.
MEMORY_MEASURES = (*MEASURES, "legs_scaled")

_SIGNAL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------
# The matrices
# ----------------------------------------------------------------------------


def hippo_naive(N, measure="legs"):
    """The specification: one entry at a time, each line a formula of the docstring of ``hippo``."""
    A = torch.zeros(N, N, dtype=torch.float64)
    B = torch.zeros(N, dtype=torch.float64)
    for n in range(N):
        if measure == "fout":  # pair (2m, 2m+1) holds cos / sin at frequency m
            b_n = 1.0 if n == 0 else (math.sqrt(2) if n % 2 == 0 else 0.0)
            B[n] = 2 * b_n
        elif measure == "lagt":
            B[n] = 1.0
        else:  # legs, legt
            B[n] = math.sqrt(2 * n + 1)
        for k in range(N):
            if measure == "legs":
                if n > k:
                    A[n, k] = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1)
                elif n == k:
                    A[n, k] = -(n + 1)
            elif measure == "legt":
                sign = 1.0 if n >= k else (-1.0) ** (n - k)
                A[n, k] = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1) * sign
            elif measure == "lagt":
                if n > k:
                    A[n, k] = -1.0
                elif n == k:
                    A[n, k] = -0.5
            else:  # fout: A = 2π R - 2 b b^T
                b_k = 1.0 if k == 0 else (math.sqrt(2) if k % 2 == 0 else 0.0)
                R = 0.0
                if n % 2 == 0 and k == n + 1:
                    R = -(n // 2)  # d/da cos(2πma) = -2πm sin(2πma)
                elif n % 2 == 1 and k == n - 1:
                    R = n // 2  # d/da sin(2πma) = +2πm cos(2πma)
                A[n, k] = 2 * math.pi * R - 2 * b_n * b_k
    return A, B


def hippo_vectorized(N, measure="legs"):
    """All entries at once, by broadcasting an index column n against an index row k."""
    q = torch.arange(N, dtype=torch.float64)
    n, k = q[:, None], q[None, :]  # (N, 1), (1, N)
    r = torch.sqrt(2 * q + 1)  # (N,)
    rr = r[:, None] * r[None, :]  # (N, N) √(2n+1) √(2k+1)
    if measure == "legs":
        A = torch.where(n > k, -rr, torch.where(n == k, -(n + 1), torch.zeros_like(rr)))
        B = r
    elif measure == "legt":
        A = -rr * torch.where(n >= k, torch.ones_like(rr), (-1.0) ** (n - k))
        B = r
    elif measure == "lagt":
        A = 0.5 * torch.eye(N, dtype=torch.float64) - torch.tril(torch.ones(N, N, dtype=torch.float64))
        B = torch.ones(N, dtype=torch.float64)
    else:  # fout
        b = torch.where(q % 2 == 0, torch.tensor(math.sqrt(2), dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
        b[0] = 1.0  # (N,) g_n(0) = g_n(1), the basis at both ends of the window
        m = torch.div(q, 2, rounding_mode="floor")  # frequency of each state
        even = q % 2 == 0
        R = torch.where(even[:, None] & (k == n + 1), -m[:, None], 0.0)  # cos row: -m at its sin partner
        R = R + torch.where(~even[:, None] & (k == n - 1), m[:, None], 0.0)  # sin row: +m at its cos partner
        A = 2 * math.pi * R - 2 * torch.outer(b, b)
        B = 2 * b
    return A.contiguous(), B.contiguous()


def hippo(N, measure="legs", impl="auto"):
    """The HiPPO matrices (A, B) of ``c' = A c + B f`` for a measure (API.md).

    Args:
        N: number of coefficients (the state size), a positive int.
        measure: one of ``MEASURES``; indices n, k run over 0..N-1:

            "legs"  HiPPO-LegS: A[n,k] = -√(2n+1)√(2k+1) for n > k, -(n+1) for
                    n = k, 0 for n < k;  B[n] = √(2n+1). The original LegS runs
                    it time-varying, c' = (1/t)(A c + B f) (uniform measure on
                    [0, t]); S4 runs it as an LTI system (measure e^{-(t-s)}).
            "legt"  HiPPO-LegT on the window [t-1, t]:
                    A[n,k] = -√(2n+1)√(2k+1) · (1 if n >= k else (-1)^{n-k}),
                    B[n] = √(2n+1). A window of length θ is (A/θ, B/θ), and
                    discretising (A/θ, B/θ) with step Δ equals discretising
                    (A, B) with step Δ/θ. S4's ``hippo.py`` returns (A/2, B/2)
                    ("halve again for timescale correctness"), a window of 2.
            "lagt"  HiPPO-LagT (Laguerre, whole past, tilt β = 1):
                    A = I/2 - tril(ones), i.e. -1/2 on the diagonal and -1 below;
                    B = 1 (all ones).
            "fout"  HiPPO-FouT on the window [t-1, t]: states (2m, 2m+1) hold the
                    cos / sin coefficients of frequency m (state 1, "sin 0", is
                    always zero, as in S4's code). A = 2πR - 2 b bᵀ, B = 2b with
                    b = (1, 0, √2, 0, √2, 0, ...), R[2m, 2m+1] = -m and
                    R[2m+1, 2m] = +m. The factor 2 is the truncated Fourier
                    series' value at the window's jump, (f(t) + f(t-1))/2
                    (chapter 4). S4's ``hippo.py`` "fout" is half of this
                    (A = πR - b bᵀ, B = b), a window of 2.
        impl: ``"naive"`` (loops over n, k), ``"vectorized"`` or ``"auto"``.
    Returns:
        (A, B): float64 tensors (N, N) and (N,) on the CPU.
    """
    op = "hippo"
    fn = dispatch(op, impl, (), naive=hippo_naive, vectorized=hippo_vectorized)
    _check_N(op, N)
    _check_measure(op, measure, MEASURES)
    return fn(int(N), measure)


# ----------------------------------------------------------------------------
# From the state back to the signal
# ----------------------------------------------------------------------------


def _legendre(N, x):
    """P_0..P_{N-1} at x (M,) -> (M, N), by (n+1) P_{n+1} = (2n+1) x P_n - n P_{n-1}."""
    P = [torch.ones_like(x), x]
    for n in range(1, N - 1):
        P.append(((2 * n + 1) * x * P[n] - n * P[n - 1]) / (n + 1))
    return torch.stack(P[:N], dim=-1)


def _laguerre(N, x):
    """L_0..L_{N-1} at x (M,) -> (M, N), by (n+1) L_{n+1} = (2n+1-x) L_n - n L_{n-1}."""
    Lg = [torch.ones_like(x), 1 - x]
    for n in range(1, N - 1):
        Lg.append(((2 * n + 1 - x) * Lg[n] - n * Lg[n - 1]) / (n + 1))
    return torch.stack(Lg[:N], dim=-1)


def hippo_basis(N, measure, ages):
    """The basis functions g_n evaluated at the ages: f(t - a) ≈ Σ_n c_n g_n(a).

    Args:
        N: number of coefficients.
        measure: one of ``MEMORY_MEASURES`` (table in the module docstring).
        ages: (M,) real tensor of ages a >= 0, the time before the present in
            the system's time units (steps × Δ). For ``"legs_scaled"`` an age is
            a fraction of the elapsed time t instead, 0 (now) <= a <= 1 (the
            start). For "legt" and "fout" only 0 <= a <= 1 is inside the window;
            outside it the functions are evaluated but mean nothing.
    Returns:
        G: (M, N) in the dtype and on the device of ``ages``.
    """
    op = "hippo_basis"
    _check_N(op, N)
    _check_measure(op, measure, MEMORY_MEASURES)
    Shapes(op).check("ages", ages, "M")
    check_dtype(op, "ages", ages, (torch.float32, torch.float64))
    if not bool(torch.all(torch.isfinite(ages) & (ages >= 0))):
        raise ValueError(f"{op}: ages must be finite and >= 0 (time before the present)")
    if measure == "legs_scaled" and bool(torch.any(ages > 1)):
        raise ValueError(f"{op}: for 'legs_scaled' an age is a fraction of the elapsed time, in [0, 1]")
    a = ages
    r = torch.sqrt(2 * torch.arange(N, dtype=a.dtype, device=a.device) + 1)  # (N,)
    if measure in ("legt", "legs_scaled"):
        return r * _legendre(N, 1 - 2 * a)
    if measure == "legs":
        return r * _legendre(N, 2 * torch.exp(-a) - 1)
    if measure == "lagt":
        return _laguerre(N, a) * torch.exp(-a / 2)[:, None]
    m = torch.div(torch.arange(N, device=a.device), 2, rounding_mode="floor").to(a.dtype)  # fout: frequency
    phase = 2 * math.pi * a[:, None] * m  # (M, N)
    G = math.sqrt(2) * torch.where(torch.arange(N, device=a.device) % 2 == 0, torch.cos(phase), torch.sin(phase))
    G[:, 0] = 1.0
    return G


def hippo_reconstruct(c, measure, ages):
    """The signal a HiPPO state remembers: f(t - a) ≈ Σ_n c_n g_n(a).

    Args:
        c: (..., N) state (coefficients) at time t.
        measure: one of ``MEMORY_MEASURES``.
        ages: (M,) ages to evaluate at (see ``hippo_basis``).
    Returns:
        (..., M) in c's dtype.
    """
    op = "hippo_reconstruct"
    if not isinstance(c, torch.Tensor) or c.dim() < 1:
        raise ValueError(f"{op}: c must be a tensor of shape (..., N); got {getattr(c, 'shape', type(c).__name__)}")
    if isinstance(ages, torch.Tensor) and ages.device != c.device:
        raise ValueError(f"{op}: all tensors must be on one device; got c on {c.device}, ages on {ages.device}")
    check_dtype(op, "c", c, _SIGNAL_DTYPES)
    work = accumulation_dtype(c.dtype)
    G = hippo_basis(c.shape[-1], measure, ages.to(work) if isinstance(ages, torch.Tensor) else ages)  # (M, N)
    return torch.einsum("mn,...n->...m", G, c.to(work)).to(c.dtype)


# ----------------------------------------------------------------------------
# Memorising a signal online
# ----------------------------------------------------------------------------


def _systems(N, measure, dt, method, L, like):
    """(Ab, Bb) of the discretised memory, in float64: one system (N, N), (N,) for an
    LTI measure, or L systems (L, N, N), (L, N) for "legs_scaled" (batched)."""
    A, B = hippo(N, "legs" if measure == "legs_scaled" else measure)
    A, B = A.to(like.device), B.to(like.device)
    if measure == "legs_scaled":
        steps = 1.0 / torch.arange(1, L + 1, dtype=torch.float64, device=like.device)  # (L,) Δ/t_k = 1/k
        Ab, Bb = discretize(A.expand(L, N, N), B.expand(L, N), steps, method=method)
    else:
        Ab, Bb = discretize(A, B, dt, method=method)
    return Ab, Bb  # float64


def hippo_memorize_naive(u, N, measure, dt, method="bilinear"):
    """The specification: one step of the recurrence per loop iteration.

    u (..., L) -> c (..., L, N), c[..., k, :] the state after reading u[..., k].
    LTI measures: c_k = Ā c_{k-1} + B̄ u_k with (Ā, B̄) = discretize(A, B, Δ).
    "legs_scaled": step k (k = 1..L, t_k = kΔ) discretises c' = (1/t)(Ac + Bf)
    at t = t_k; (A/t_k, B/t_k) with step Δ is (A, B) with step 1/k, so Δ drops
    out: the original LegS is timescale-invariant.
    """
    L = u.shape[-1]
    A, B = hippo(N, "legs" if measure == "legs_scaled" else measure)
    A, B = A.to(u.device), B.to(u.device)
    if measure != "legs_scaled":
        Ab, Bb = discretize(A, B, dt, method=method)
        Ab, Bb = Ab.to(u.dtype), Bb.to(u.dtype)
    c = torch.zeros(*u.shape[:-1], N, dtype=u.dtype, device=u.device)  # (..., N)
    states = []
    for k in range(L):
        if measure == "legs_scaled":
            Ab, Bb = discretize(A, B, 1.0 / (k + 1), method=method)
            Ab, Bb = Ab.to(u.dtype), Bb.to(u.dtype)
        c = c @ Ab.T + Bb * u[..., k, None]  # (..., N)
        states.append(c)
    return torch.stack(states, dim=-2)  # (..., L, N)


def _power_kernel(Ab, Bb, L):
    """K[j] = Ā^j B̄ for j = 0..L-1 -> (L, N), by doubling: K[m:2m] = Ā^m K[0:m]."""
    K, P = Bb[None, :], Ab  # (1, N); P = Ā^m
    while K.shape[0] < L:
        K = torch.cat([K, K @ P.T], dim=0)  # (2m, N)
        P = P @ P
    return K[:L]


def _causal_conv(u, K):
    """c[..., t, n] = Σ_{j <= t} K[j, n] u[..., t - j], by FFT with padding to 2L."""
    L = u.shape[-1]
    n_fft = 2 * L
    U = torch.fft.rfft(u, n=n_fft)  # (..., L+1)
    Kf = torch.fft.rfft(K.T, n=n_fft)  # (N, L+1)
    c = torch.fft.irfft(U[..., None, :] * Kf, n=n_fft)[..., :L]  # (..., N, L)
    return c.transpose(-1, -2)


def hippo_memorize_vectorized(u, N, measure, dt, method="bilinear"):
    """No loop over time for the LTI measures; a batched discretisation for "legs_scaled".

    LTI measures: unrolling c_k = Ā c_{k-1} + B̄ u_k from c_{-1} = 0 gives the
    convolution c_k = Σ_{j <= k} Ā^j B̄ u_{k-j}. The kernel K[j] = Ā^j B̄
    (L, N) comes from log2(L) matrix products (doubling), the N convolutions
    from one batched FFT: O(N^3 log L + N L log L) instead of L matrix-vector
    steps.

    "legs_scaled" is time-varying, so it has no convolution form. Its L
    discrete systems are built in one batched solve (the naive version calls
    ``discretize`` L times); the recurrence itself remains a loop of batched
    matrix-vector products.
    """
    L = u.shape[-1]
    Ab, Bb = _systems(N, measure, dt, method, L, u)  # float64
    if measure != "legs_scaled":
        # The kernel is computed in float64 (log2(L) products of N x N matrices: cheap),
        # because repeated squaring in float32 loses digits on LagT's and FouT's
        # non-normal Ā; the convolution runs in u's precision.
        return _causal_conv(u, _power_kernel(Ab, Bb, L).to(u.dtype))
    Ab, Bb = Ab.to(u.dtype), Bb.to(u.dtype)
    c = torch.zeros(*u.shape[:-1], N, dtype=u.dtype, device=u.device)  # (..., N)
    states = []
    for k in range(L):
        c = torch.einsum("mn,...n->...m", Ab[k], c) + Bb[k] * u[..., k, None]
        states.append(c)
    return torch.stack(states, dim=-2)


def hippo_memorize(u, N, measure="legs", dt=None, method="bilinear", impl="auto"):
    """Memorise signals online with a HiPPO memory: every state along the way.

    Args:
        u: (..., L) real signals, sample k read at step k.
        N: number of coefficients.
        measure: one of ``MEMORY_MEASURES``; "legs_scaled" is the original,
            time-varying LegS c' = (1/t)(Ac + Bf).
        dt: the step Δ (a float > 0); default 1/L, so that the whole signal
            spans one time unit (the windows of "legt" and "fout"). Ignored by
            "legs_scaled", which is timescale-invariant.
        method: the discretisation rule (``ssm_edu.METHODS``); bilinear as in
            the HiPPO paper and S4.
        impl: ``"naive"`` (loop over steps), ``"vectorized"`` (kernel + FFT
            for the LTI measures) or ``"auto"``.
    Returns:
        c: (..., L, N) in u's dtype: c[..., k, :] is the state after reading
        u[..., k]. Reconstruct with ``hippo_reconstruct(c[..., k, :], measure,
        ages)``. Differentiable with respect to u.
    """
    op = "hippo_memorize"
    fn = dispatch(op, impl, (u,), naive=hippo_memorize_naive, vectorized=hippo_memorize_vectorized)
    _check_N(op, N)
    _check_measure(op, measure, MEMORY_MEASURES)
    if method not in METHODS:
        raise ValueError(f"{op}: unknown method={method!r}; valid: {', '.join(map(repr, METHODS))}")
    if not isinstance(u, torch.Tensor) or u.dim() < 1 or u.shape[-1] < 1:
        raise ValueError(f"{op}: u must be a tensor of shape (..., L) with L >= 1; got {tuple(getattr(u, 'shape', ())) or type(u).__name__}")
    check_dtype(op, "u", u, _SIGNAL_DTYPES)
    L = u.shape[-1]
    dt = 1.0 / L if dt is None else dt
    if isinstance(dt, torch.Tensor) and dt.dim() != 0:
        raise ValueError(f"{op}: dt must be a float or a 0-dim tensor; got shape {tuple(dt.shape)}")
    dt = float(as_dt(op, dt, u.to(torch.float64)))
    work = accumulation_dtype(u.dtype)
    return fn(u.to(work), int(N), measure, dt, method).to(u.dtype)


# ----------------------------------------------------------------------------
# The chapter's experiment
# ----------------------------------------------------------------------------


def hippo_test_signal(L, T=1.0, dtype=torch.float64):
    """The chapter's input: six sinusoids sampled at t_k = kT/L, k = 1..L.

    f(t) = a Σ_i s_i sin(2π ν_i t) with ν = (1, 2, 3, 4, 5, 7) cycles per
    time unit, signs s = (+, +, +, -, +, -) and a = 0.37/√3, so that the RMS
    over one time unit is 0.370. The signs make Σ s_i ν_i = 0, so the signal
    starts smoothly, f(0) = f'(0) = 0: switching on a signal with a jump is a
    failure mode of its own (chapter 4). Returns (t (L,), u (L,)).
    """
    _check_N("hippo_test_signal", L, "L")
    t = T * torch.arange(1, L + 1, dtype=dtype) / L
    nu = torch.tensor([1.0, 2, 3, 4, 5, 7], dtype=dtype)
    s = torch.tensor([1.0, 1, 1, -1, 1, -1], dtype=dtype)
    u = 0.37 / math.sqrt(3) * (s * torch.sin(2 * math.pi * nu * t[:, None])).sum(-1)
    return t, u


def sample_ages(L, dt, dtype=torch.float64, device=None):
    """Ages, at the end of a memorisation, of the L samples in time order: (L - k + 1/2) Δ.

    Sample k (1-based) is held over the step (t_{k-1}, t_k] (chapter 2), so it
    sits, on average, half a step before t_k. Pass ``dt=1/L`` for the
    fractions of elapsed time that "legs_scaled" needs.
    """
    _check_N("sample_ages", L, "L")
    check_positive("sample_ages", "dt", dt)
    return dt * (torch.arange(L - 1, -1, -1, dtype=dtype, device=device) + 0.5)


def hippo_rmse(u, N, measure, dt=None, last=None, method="bilinear", impl="auto"):
    """Memorise u (L,), reconstruct it from the final state, and return the RMS error.

    ``last``: compare only the most recent ``last`` samples (default: all of
    them). Δ defaults to 1/L; "legs_scaled" reconstructs over fractions of
    the whole history.
    """
    c = hippo_memorize(u, N, measure, dt=dt, method=method, impl=impl)[..., -1, :]  # (..., N); checks u
    L = u.shape[-1]
    dt = 1.0 / L if dt is None else dt
    if last is not None and (isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= L):
        raise ValueError(f"hippo_rmse: last must be an int in 1..L = 1..{L}; got {last!r}")
    ages = sample_ages(L, 1.0 / L if measure == "legs_scaled" else dt, dtype=accumulation_dtype(u.dtype), device=u.device)
    last = L if last is None else last
    rec = hippo_reconstruct(c, measure, ages[L - last:])  # (..., last)
    return float((rec - u[..., L - last:]).pow(2).mean().sqrt())


def _check_N(op, N, name="N"):
    if isinstance(N, bool) or not isinstance(N, numbers.Integral) or N < 1:
        raise ValueError(f"{op}: {name} must be a positive int; got {N!r}")


def _check_measure(op, measure, valid):
    if measure not in valid:
        raise ValueError(f"{op}: unknown measure={measure!r}; valid: {', '.join(map(repr, valid))}")
