"""Continuous-time state space models (chapter 1).

Symbols -> code:  x(t) -> x,  u(t) -> u,  y(t) -> y,  A, B, C, D -> A, B, C, D,
h(t) (impulse response) -> h.   Shapes: N state, T time points.

    x'(t) = A x(t) + B u(t)        y(t) = C x(t) + D u(t)

    x(t)  = e^{At} x(0) + ∫_0^t e^{A(t-s)} B u(s) ds          (variation of constants)
    h(t)  = C e^{At} B                 (response to a unit impulse at t = 0, D aside)
    step  = C (∫_0^t e^{As} ds) B + D  (response to u = 1 from t = 0)
    modes: A = V Λ V^{-1}  =>  h(t) = Σ_i r_i e^{λ_i t},  r_i = (C V)_i (V^{-1} B)_i

The book's running examples are a damped oscillator and an RC low-pass filter.
All systems here are single-input single-output: B and C are vectors (N,).

Bad input (a wrong shape, a tensor on another device, an unsupported dtype)
raises ValueError or TypeError before any work. The times t must be finite
and >= 0 (ValueError otherwise). NaN or inf in A, B, C, D or the input are
not checked for (that would cost a GPU synchronisation per call): they
propagate into the outputs.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._dispatch import dispatch
from ._validate import Shapes, check_dtype, check_same_device
from .discretize import discretize_vectorized
from .numerics import expm

__all__ = [
    "damped_oscillator",
    "rc_filter",
    "impulse_response",
    "impulse_response_naive",
    "impulse_response_vectorized",
    "impulse_response_modal",
    "modes",
    "step_response",
    "simulate",
    "simulate_exact",
]

_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


def damped_oscillator(omega0=1.0, zeta=0.1, dtype=torch.float64):
    """Mass on a spring with damping: p'' + 2 ζ ω0 p' + ω0² p = ω0² u.

    State x = (position p, velocity p'); the output is the position. The input
    is scaled by ω0² so that a constant input u = 1 settles at p = 1 (unit
    static gain), whatever ω0.
    Eigenvalues: -ζω0 ± ω0 sqrt(ζ² - 1): complex (oscillating) for ζ < 1,
    a repeated real pair at ζ = 1 (critical damping), two real ones for ζ > 1.

    Returns A (2, 2), B (2,), C (2,), D (0-dim).
    """
    A = torch.tensor([[0.0, 1.0], [-(omega0**2), -2.0 * zeta * omega0]], dtype=dtype)
    B = torch.tensor([0.0, omega0**2], dtype=dtype)
    C = torch.tensor([1.0, 0.0], dtype=dtype)
    return A, B, C, torch.zeros((), dtype=dtype)


def rc_filter(tau=1.0, dtype=torch.float64):
    """RC low-pass filter: τ v' = -v + u, output the capacitor voltage v.

    One state, eigenvalue -1/τ: the filter remembers the input of roughly the
    last τ seconds. Returns A (1, 1), B (1,), C (1,), D (0-dim).
    """
    if not tau > 0:
        raise ValueError(f"rc_filter: tau must be > 0; got {tau}")
    A = torch.tensor([[-1.0 / tau]], dtype=dtype)
    B = torch.tensor([1.0 / tau], dtype=dtype)
    C = torch.tensor([1.0], dtype=dtype)
    return A, B, C, torch.zeros((), dtype=dtype)


def _check_siso(op, A, B, C, t, D=None, x0=None):
    """A (N, N), B (N,), C (N,), t (T,) with T >= 1; D a number or 0-dim tensor; x0 (N,) or None."""
    shapes = Shapes(op)
    shapes.check("A", A, "N N")
    shapes.check("B", B, "N")
    shapes.check("C", C, "N")
    shapes.check("t", t, "T")
    shapes.nonempty("T")
    if x0 is not None:
        shapes.check("x0", x0, "N")
    _check_scalar(op, "D", D)
    check_same_device(op, A=A, B=B, C=C, t=t, D=D, x0=x0)
    for name, x in (("A", A), ("B", B), ("C", C), ("x0", x0)):
        if x is not None:
            check_dtype(op, name, x, _DTYPES)
    check_dtype(op, "t", t, (torch.float32, torch.float64))
    if not bool(torch.all(torch.isfinite(t) & (t >= 0))):
        raise ValueError(f"{op}: t must hold real, finite times >= 0")


def _check_scalar(op, name, x):
    """A skip term D: None, a Python number or a 0-dim tensor."""
    if x is None or (isinstance(x, (int, float, complex)) and not isinstance(x, bool)):
        return
    if not isinstance(x, torch.Tensor) or x.dim() != 0:
        raise ValueError(f"{op}: {name} must be a number or a 0-dim tensor; got "
                         f"{'shape ' + str(tuple(x.shape)) if isinstance(x, torch.Tensor) else repr(x)}")


def impulse_response_naive(A, B, C, t):
    """The specification: one matrix exponential per time point. t (T,) -> h (T,)."""
    return torch.stack([C @ expm(A * ti) @ B for ti in t])


def impulse_response_vectorized(A, B, C, t):
    """All time points in one batched matrix exponential: (T, N, N) at once."""
    E = expm(t[:, None, None] * A)  # (T, N, N)
    return E @ B @ C  # (T, N) @ (N,) -> (T,)


def impulse_response(A, B, C, t, impl="auto"):
    """h(t) = C e^{At} B at the times ``t`` (T,), for A (N, N), B (N,), C (N,).

    ``impl``: ``"naive"`` (a loop over t) or ``"vectorized"`` (``"auto"``).
    Returns (T,) in the promoted dtype of the inputs.
    """
    fn = dispatch("impulse_response", impl, (A, B, C, t), naive=impulse_response_naive, vectorized=impulse_response_vectorized)
    _check_siso("impulse_response", A, B, C, t)
    dtype = torch.promote_types(torch.promote_types(A.dtype, B.dtype), C.dtype)
    return fn(A.to(dtype), B.to(dtype), C.to(dtype), t.to(A.real.dtype))


def modes(A, B, C):
    """Eigenvalues λ (N,) and residues r (N,) of h(t) = C e^{At} B = Σ_i r_i e^{λ_i t}.

    From the eigendecomposition A = V diag(λ) V^{-1}: r = (C V) ⊙ (V^{-1} B),
    both complex (complex128 for float64 input). Valid only when A is
    diagonalisable; near a defective A (the critically damped oscillator)
    V is ill-conditioned and the residues blow up (chapter 1, "What goes wrong").
    """
    shapes = Shapes("modes")
    shapes.check("A", A, "N N")
    shapes.check("B", B, "N")
    shapes.check("C", C, "N")
    check_same_device("modes", A=A, B=B, C=C)
    for name, x in (("A", A), ("B", B), ("C", C)):
        check_dtype("modes", name, x, _DTYPES)
    lam, V = torch.linalg.eig(A)  # (N,), (N, N) complex
    r = (C.to(V.dtype) @ V) * torch.linalg.solve(V, B.to(V.dtype))  # (N,)
    return lam, r


def impulse_response_modal(A, B, C, t):
    """h(t) = Re Σ_i r_i e^{λ_i t} from one eigendecomposition: O(N^3 + T N), t (T,) -> h (T,).

    Fast (no matrix exponential per time point) and exact in exact arithmetic
    for a diagonalisable A; inaccurate, or plain wrong, when A is (nearly)
    defective. Not one of ``impulse_response``'s ``impl`` choices for that reason.
    Real A, B, C give a real h (the imaginary parts cancel over conjugate pairs).
    """
    _check_siso("impulse_response_modal", A, B, C, t)
    lam, r = modes(A, B, C)
    h = torch.exp(t.to(lam.dtype)[:, None] * lam[None, :]) @ r  # (T, N) @ (N,) -> (T,)
    real_input = not (A.is_complex() or B.is_complex() or C.is_complex())
    return h.real if real_input else h


def step_response(A, B, C, D, t):
    """Response to a unit step from rest: C (∫_0^t e^{As} ds) B + D, at times t (T,).

    The integral comes from one batched exponential of the block matrix
    t [[A, B], [0, 0]] (its top-right block), which needs no inverse of A:
    the same trick that gives ZOH its B̄ in chapter 2.
    """
    _check_siso("step_response", A, B, C, t, D=D)
    T, N = t.shape[0], A.shape[0]
    # ZOH's B̄ at step Δ = t is exactly ∫_0^t e^{As} ds B (chapter 2).
    integral_B = discretize_vectorized(A.expand(T, N, N), B.expand(T, N), t.to(A.dtype), "zoh")[1]  # (T, N)
    return integral_B @ C + D


def simulate(A, B, C, D, u: Callable[[torch.Tensor], torch.Tensor], t, x0=None, substeps=10):
    """Integrate x' = Ax + Bu(t) with classical Runge-Kutta (RK4); return y (T,) at the times t.

    ``u`` is a function of time (a 0-dim tensor) returning a scalar input.
    Between consecutive times in ``t`` the solver takes ``substeps`` steps.
    This is how a general-purpose ODE solver sees an SSM: accurate when the
    steps are small compared with the fastest time scale 1/|λ|max of A, and
    slow because it is a sequential loop. Chapter 2 replaces it by an exact
    recurrence for piecewise-constant inputs.
    """
    _check_siso("simulate", A, B, C, t, D=D, x0=x0)
    if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"simulate: substeps must be an int >= 1; got {substeps!r}")
    if not callable(u):
        raise TypeError(f"simulate: u must be a function of time (use simulate_exact for sampled inputs); got {type(u).__name__}")
    x = torch.zeros(A.shape[0], dtype=A.dtype, device=A.device) if x0 is None else x0.to(A.dtype)

    def f(s, x):
        return A @ x + B * u(s)

    ys = [C @ x + D * u(t[0])]
    for t0, t1 in zip(t[:-1], t[1:]):
        h = (t1 - t0) / substeps
        for i in range(substeps):
            s = t0 + i * h
            k1 = f(s, x)
            k2 = f(s + h / 2, x + h / 2 * k1)
            k3 = f(s + h / 2, x + h / 2 * k2)
            k4 = f(s + h, x + h * k3)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        ys.append(C @ x + D * u(t1))
    return torch.stack(ys)


def simulate_exact(A, B, C, D, u, t, x0=None):
    """Exact response to an input held constant between the sample times t.

    The input equals ``u[k]`` on [t_k, t_{k+1}) (a "zero-order hold"); then,
    by variation of constants, each interval is solved exactly:

        x_{k+1} = e^{A h_k} x_k + (∫_0^{h_k} e^{As} ds) B u_k,     h_k = t_{k+1} - t_k,

    with both factors read off one batched exponential of h_k [[A, B], [0, 0]]
    (Van Loan), so A need not be invertible. Chapter 2 calls this recurrence ZOH.

    A (N, N), B (N,), C (N,), D (0-dim), u (T,), t (T,) increasing, x0 (N,)
    (zero by default). Returns y (T,) with y_k = C x_k + D u_k, and the states
    x (T, N) at the times t.
    """
    _check_siso("simulate_exact", A, B, C, t, D=D, x0=x0)
    shapes = Shapes("simulate_exact")
    shapes.check("t", t, "T")
    shapes.check("u", u, "T")
    check_same_device("simulate_exact", u=u, t=t)
    check_dtype("simulate_exact", "u", u, _DTYPES)
    if t.numel() > 1 and not bool(torch.all(t[1:] > t[:-1])):
        raise ValueError("simulate_exact: t must be strictly increasing")
    N = A.shape[0]
    h = (t[1:] - t[:-1]).to(A.dtype)  # (T-1,)
    # One batched block exponential for all intervals: the ZOH rule of chapter 2.
    Ad, Bd = discretize_vectorized(A.expand(len(h), N, N), B.expand(len(h), N), h, "zoh")  # (T-1, N, N), (T-1, N)
    x = torch.zeros(N, dtype=A.dtype, device=A.device) if x0 is None else x0.to(A.dtype)
    xs = [x]
    for k in range(t.numel() - 1):
        x = Ad[k] @ x + Bd[k] * u[k]
        xs.append(x)
    X = torch.stack(xs)  # (T, N)
    return X @ C + D * u.to(A.dtype), X
