"""Discretisation: from the continuous system to a recurrence (chapter 2).

Symbols -> code:  A -> A,  B -> B,  Δ -> dt,  Ā -> Ab,  B̄ -> Bb,
Λ (diagonal of A) -> Lambda.   Shapes: N state, M inputs, ... a batch of systems.

Every rule turns  x'(t) = A x(t) + B u(t)  into  x_k = Ā x_{k-1} + B̄ u_k:

    zoh             Ā = exp(ΔA)                   B̄ = (ΔA)^-1 (exp(ΔA) - I) ΔB
    bilinear        Ā = (I - ΔA/2)^-1 (I + ΔA/2)  B̄ = (I - ΔA/2)^-1 ΔB
    euler           Ā = I + ΔA                    B̄ = ΔB          (forward Euler)
    backward_euler  Ā = (I - ΔA)^-1               B̄ = (I - ΔA)^-1 ΔB
    exp_euler       Ā = exp(ΔA)                   B̄ = ΔB          (Mamba-1/2's rule)

C and D are never changed. ``discretize`` takes dense matrices, ``discretize_diag``
a diagonal (possibly complex) A given by its diagonal Λ.

Bad input (a wrong rank, mismatched sizes, tensors on different devices, an
unsupported dtype, an unknown method) raises ValueError or TypeError, naming
the argument, before any work. Δ must be finite and > 0 (ValueError). NaN and
inf in A, Λ or B are not checked for (the check would cost a GPU
synchronisation per call): they propagate into Ā and B̄. ZOH's naive
formulas need an invertible ΔA (Λ ≠ 0); with a singular one they raise
(dense) or return inf/NaN (diagonal), where the vectorized versions do not.
"""

from __future__ import annotations

import math

import torch

from ._dispatch import dispatch
from ._validate import Shapes, as_dt, check_dtype, check_positive, check_same_device
from .numerics import accumulation_dtype, expm

__all__ = [
    "METHODS",
    "discretize",
    "discretize_naive",
    "discretize_vectorized",
    "discretize_diag",
    "discretize_diag_naive",
    "discretize_diag_vectorized",
    "init_log_dt",
    "softplus_inverse",
    "diag_ssm_stack",
]

METHODS = ("zoh", "bilinear", "euler", "backward_euler", "exp_euler")
_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------
# Dense systems
# ----------------------------------------------------------------------------


def _rule(A, B, dt, method):
    """One system, the formulas exactly as written in the module docstring.

    A (N, N), B (N, M), dt a 0-dim tensor. Returns Ab (N, N), Bb (N, M).
    """
    I = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    if method == "zoh":
        Ab = expm(dt * A)
        Bb = torch.linalg.solve(dt * A, Ab - I) @ (dt * B)  # needs A invertible
    elif method == "bilinear":
        inv = torch.linalg.inv(I - dt / 2 * A)
        Ab, Bb = inv @ (I + dt / 2 * A), inv @ (dt * B)
    elif method == "euler":
        Ab, Bb = I + dt * A, dt * B
    elif method == "backward_euler":
        inv = torch.linalg.inv(I - dt * A)
        Ab, Bb = inv, inv @ (dt * B)
    else:  # exp_euler
        Ab, Bb = expm(dt * A), dt * B
    return Ab, Bb


def discretize_naive(A, B, dt, method="zoh"):
    """The specification: one system at a time, literal formulas.

    A (..., N, N); B (..., N) or (..., N, M); dt a float, a 0-dim tensor or a
    tensor of the batch shape (...). Returns Ab (..., N, N) and Bb shaped like B.

    ZOH uses ``(ΔA)^-1 (exp(ΔA) - I)`` literally, so it needs an invertible A,
    and in float32 it loses digits to cancellation when ΔA is small
    (chapter 2, "What goes wrong"). The vectorized version has neither problem.
    """
    N, batch = A.shape[-1], A.shape[:-2]
    Bm = B.unsqueeze(-1) if B.dim() == A.dim() - 1 else B  # (..., N, M)
    dt = torch.as_tensor(dt, dtype=_real_dtype(A), device=A.device).expand(batch)
    if batch.numel() == 0:  # no system at all: nothing to loop over
        return torch.empty_like(A), torch.empty_like(B)
    Ab_list, Bb_list = [], []
    for A1, B1, dt1 in zip(A.reshape(-1, N, N), Bm.reshape(-1, N, Bm.shape[-1]), dt.reshape(-1)):
        Ab1, Bb1 = _rule(A1, B1, dt1, method)
        Ab_list.append(Ab1)
        Bb_list.append(Bb1)
    Ab = torch.stack(Ab_list).reshape(A.shape)
    Bb = torch.stack(Bb_list).reshape(Bm.shape)
    return Ab, Bb.reshape(B.shape)


def discretize_vectorized(A, B, dt, method="zoh"):
    """All systems at once, with batched matrix functions.

    ZOH comes from one matrix exponential of the block matrix (Van Loan, 1978)

        exp( Δ [[A, B], [0, 0]] ) = [[exp(ΔA), B̄], [0, I]],

    which needs no inverse of A (it works for singular A, such as an
    integrator) and suffers no cancellation at small Δ.
    """
    N, batch = A.shape[-1], A.shape[:-2]
    Bm = B.unsqueeze(-1) if B.dim() == A.dim() - 1 else B  # (..., N, M)
    M = Bm.shape[-1]
    dt = torch.as_tensor(dt, dtype=_real_dtype(A), device=A.device).expand(batch)[..., None, None]
    dtA, dtB = dt * A, dt * Bm
    I = torch.eye(N, dtype=A.dtype, device=A.device).expand_as(A)
    if method == "zoh":
        top = torch.cat([dtA, dtB], dim=-1)  # (..., N, N+M)
        bottom = torch.zeros(*batch, M, N + M, dtype=A.dtype, device=A.device)
        E = expm(torch.cat([top, bottom], dim=-2))  # (..., N+M, N+M)
        Ab, Bb = E[..., :N, :N], E[..., :N, N:]
    elif method == "bilinear":
        X = torch.linalg.solve(I - dtA / 2, torch.cat([I + dtA / 2, dtB], dim=-1))
        Ab, Bb = X[..., :N], X[..., N:]
    elif method == "euler":
        Ab, Bb = I + dtA, dtB
    elif method == "backward_euler":
        X = torch.linalg.solve(I - dtA, torch.cat([I, dtB], dim=-1))
        Ab, Bb = X[..., :N], X[..., N:]
    else:  # exp_euler
        Ab, Bb = expm(dtA), dtB
    return Ab, Bb.reshape(B.shape)


def discretize(A, B, dt, method="zoh", impl="auto"):
    """Discretise a dense continuous system (API.md).

    Args:
        A: (N, N), or a batch of systems (..., N, N); real or complex.
        B: (N,) or (N, M), with the same leading batch dims as A.
        dt: the step Δ > 0: a float, a 0-dim tensor, or a tensor of A's batch shape.
        method: one of ``METHODS``.
        impl: ``"naive"``, ``"vectorized"`` or ``"auto"`` (= vectorized;
            discretisation is a one-off on tiny matrices and has no kernel).
    Returns:
        (Ab, Bb): Ab like A, Bb like B, in the input dtype.
    """
    op = "discretize"
    fn = dispatch(op, impl, (A, B, dt), naive=discretize_naive, vectorized=discretize_vectorized)
    _check_method(op, method)
    shapes = Shapes(op)
    if not isinstance(A, torch.Tensor) or A.dim() < 2:
        raise ValueError(f"{op}: A must have shape (N, N) or (..., N, N); got {tuple(getattr(A, 'shape', ()))}")
    shapes.check("A", A, "... N N")
    shapes.check("B", B, "... N", "... N M")
    shapes.nonempty("N")
    check_same_device(op, A=A, B=B, dt=dt)
    check_dtype(op, "A", A, _DTYPES)
    check_dtype(op, "B", B, _DTYPES)
    dt = as_dt(op, dt, A, shapes["..."])
    work = torch.promote_types(accumulation_dtype(A.dtype), accumulation_dtype(B.dtype))
    Ab, Bb = fn(A.to(work), B.to(work), dt.to(_real_dtype_of(work)), method)
    out = torch.promote_types(A.dtype, B.dtype)
    return Ab.to(out), Bb.to(out)


# ----------------------------------------------------------------------------
# Diagonal systems
# ----------------------------------------------------------------------------


def discretize_diag_naive(Lambda, B, dt, method="zoh"):
    """The specification: a loop over the modes, one scalar formula each.

    Lambda (..., N), B and dt broadcastable against it. ZOH is
    ``(exp(ΔΛ) - 1) / Λ · B``, literally: it needs Λ ≠ 0 and, like the dense
    naive version, loses digits in float32 when |ΔΛ| is small.
    """
    Lambda, B, dt = torch.broadcast_tensors(Lambda, B, torch.as_tensor(dt, device=Lambda.device))
    dtype = torch.promote_types(Lambda.dtype, B.dtype)
    if Lambda.numel() == 0:  # no mode at all: nothing to loop over
        return torch.empty_like(Lambda), torch.empty_like(B, dtype=dtype)
    Ab, Bb = [], []
    for lam, b, d in zip(Lambda.reshape(-1), B.reshape(-1), dt.reshape(-1)):
        if method == "zoh":
            a = torch.exp(d * lam)
            bb = (a - 1) / lam * b
        elif method == "bilinear":
            a = (1 + d / 2 * lam) / (1 - d / 2 * lam)
            bb = d * b / (1 - d / 2 * lam)
        elif method == "euler":
            a, bb = 1 + d * lam, d * b
        elif method == "backward_euler":
            a = 1 / (1 - d * lam)
            bb = d * b / (1 - d * lam)
        else:  # exp_euler
            a, bb = torch.exp(d * lam), d * b
        Ab.append(a)
        Bb.append(bb)
    shape = Lambda.shape
    return torch.stack(Ab).to(Lambda.dtype).reshape(shape), torch.stack(Bb).to(dtype).reshape(shape)


def _phi1(x):
    """(exp(x) - 1) / x with the value 1 at x = 0, accurate for small |x| (expm1)."""
    zero = x == 0
    safe = torch.where(zero, torch.ones_like(x), x)  # keeps the gradient finite at 0
    return torch.where(zero, torch.ones_like(x), torch.expm1(safe) / safe)


def discretize_diag_vectorized(Lambda, B, dt, method="zoh"):
    """Elementwise over every mode at once.

    ZOH is written ``Δ φ1(ΔΛ) B`` with ``φ1(x) = expm1(x) / x``: the same
    function as the naive formula, but exact at Λ = 0 and free of cancellation
    when |ΔΛ| is small.
    """
    dt = torch.as_tensor(dt, device=Lambda.device)
    x = dt * Lambda
    if method == "zoh":
        Ab, Bb = torch.exp(x), dt * _phi1(x) * B
    elif method == "bilinear":
        den = 1 - x / 2
        Ab, Bb = (1 + x / 2) / den, dt * B / den
    elif method == "euler":
        Ab, Bb = 1 + x, dt * B
    elif method == "backward_euler":
        den = 1 - x
        Ab, Bb = 1 / den, dt * B / den
    else:  # exp_euler
        Ab, Bb = torch.exp(x), dt * B
    shape = torch.broadcast_shapes(Lambda.shape, B.shape, dt.shape)
    return torch.broadcast_to(Ab, shape).contiguous().to(Lambda.dtype), torch.broadcast_to(Bb, shape).contiguous()


def discretize_diag(Lambda, B, dt, method="zoh", impl="auto"):
    """Discretise a diagonal system, mode by mode (API.md).

    Args:
        Lambda: (..., N) diagonal of A, real or complex.
        B: broadcastable against Lambda (usually (..., N)).
        dt: Δ > 0, a float or a tensor broadcastable against Lambda
            (for example (H, 1) for one step per channel).
        method: one of ``METHODS``.
        impl: ``"naive"``, ``"vectorized"`` or ``"auto"`` (= vectorized).
    Returns:
        (Ab, Bb), both of the broadcast shape; Ab has Lambda's dtype, Bb the
        promoted dtype of Lambda and B.
    """
    op = "discretize_diag"
    fn = dispatch(op, impl, (Lambda, B, dt), naive=discretize_diag_naive, vectorized=discretize_diag_vectorized)
    _check_method(op, method)
    for name, x in (("Lambda", Lambda), ("B", B)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
        check_dtype(op, name, x, _DTYPES)
    if Lambda.dim() < 1:
        raise ValueError(f"{op}: Lambda must have shape (..., N); got ()")
    check_same_device(op, Lambda=Lambda, B=B, dt=dt)
    dt_t = as_dt(op, dt, Lambda)
    try:
        torch.broadcast_shapes(Lambda.shape, B.shape, dt_t.shape)
    except RuntimeError:
        raise ValueError(
            f"{op}: Lambda (..., N), B and dt must broadcast together; got Lambda {tuple(Lambda.shape)}, "
            f"B {tuple(B.shape)}, dt {tuple(dt_t.shape)}"
        ) from None
    work = torch.promote_types(accumulation_dtype(Lambda.dtype), accumulation_dtype(B.dtype))
    lam_w = Lambda.to(torch.promote_types(accumulation_dtype(Lambda.dtype), _real_dtype_of(work)))
    Ab, Bb = fn(lam_w, B.to(work), dt_t.to(_real_dtype_of(work)), method)
    return Ab.to(Lambda.dtype), Bb.to(torch.promote_types(Lambda.dtype, B.dtype))


# ----------------------------------------------------------------------------
# Initialising Δ
# ----------------------------------------------------------------------------


def init_log_dt(shape, dt_min=1e-3, dt_max=1e-1, generator=None, dtype=torch.float32):
    """log Δ drawn uniformly in [log dt_min, log dt_max] (S4, S4D, S5, Mamba).

    Every time scale between ``dt_min`` and ``dt_max`` gets the same share of
    the channels, so a layer starts with memories from ~1/dt_max to ~1/dt_min
    steps long (chapter 2).
    """
    check_positive("init_log_dt", "dt_min", dt_min)
    if not dt_max > dt_min:
        raise ValueError(f"init_log_dt: need dt_max > dt_min; got dt_min={dt_min}, dt_max={dt_max}")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    u = torch.rand(shape, generator=generator, dtype=dtype)
    return math.log(dt_min) + u * (math.log(dt_max) - math.log(dt_min))


def softplus_inverse(dt):
    """The bias b with softplus(b) = Δ: ``b = Δ + log(-expm1(-Δ))`` (Mamba's dt_bias init)."""
    dt = torch.as_tensor(dt)
    check_positive("softplus_inverse", "dt", dt)
    return dt + torch.log(-torch.expm1(-dt))


# ----------------------------------------------------------------------------
# A stack of diagonal SSM layers (chapter 2, "What goes wrong")
# ----------------------------------------------------------------------------


def diag_ssm_stack(u, Lambda, B, C, dt, depth, method="zoh"):
    """Run ``depth`` identical diagonal SSM layers one after the other.

    Each layer discretises (Λ, B, Δ) with ``method`` and runs, from x_{-1} = 0,

        x_k = Ā ⊙ x_{k-1} + B̄ u_k        y_k = Re Σ_n C_n x_{k,n}

    and its output y is the next layer's input u. There is no skip connection
    (D), nonlinearity or normalisation, so whatever happens to the activations
    through depth is the discretisation's doing alone.

    Args:
        u: (H, L) real input, H independent channels of length L.
        Lambda, B, C: (H, N) diagonal of A, input and output vectors
            (real or complex).
        dt: Δ, a float or an (H, 1) tensor (one step per channel).
        depth: number of layers.
        method: one of ``METHODS``.
    Returns:
        [u, y_1, ..., y_depth], a list of depth + 1 tensors (H, L) in u's dtype.
    """
    shapes = Shapes("diag_ssm_stack")
    shapes.check("u", u, "H L")
    check_dtype("diag_ssm_stack", "u", u, (torch.float32, torch.float64))
    for name, x in (("Lambda", Lambda), ("B", B), ("C", C)):
        shapes.check(name, x, "H N")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"diag_ssm_stack: depth must be an int >= 0; got {depth!r}")
    Ab, Bb = discretize_diag(Lambda, B, dt, method=method)  # (H, N) each
    outs = [u]
    for _ in range(depth):
        x = torch.zeros_like(Ab)  # (H, N)
        ys = []
        for k in range(u.shape[-1]):
            x = Ab * x + Bb * outs[-1][:, k, None]  # (H, N)
            ys.append((C * x).sum(-1).real)  # (H,)
        outs.append(torch.stack(ys, dim=-1).to(u.dtype))  # (H, L)
    return outs


def _check_method(op, method):
    if method not in METHODS:
        raise ValueError(f"{op}: unknown method={method!r}; valid: {', '.join(map(repr, METHODS))}")


def _real_dtype(x: torch.Tensor) -> torch.dtype:
    return x.real.dtype if x.is_complex() else x.dtype


def _real_dtype_of(dtype: torch.dtype) -> torch.dtype:
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)
