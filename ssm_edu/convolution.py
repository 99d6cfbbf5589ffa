"""Recurrence and convolution: the two faces of a discrete LTI system (chapter 3).

Symbols -> code:  Ā -> Ab,  B̄ -> Bb,  C -> C,  D -> D,  u_k -> u[..., k],
y_k -> y[..., k],  K_k = C Ā^k B̄ -> K[..., k],  T (the Toeplitz matrix) -> T.
Shapes: N state, L length, b batch, H channels, ... any batch dims.

Recurrent mode (one step per token, state x of size N):

    x_k = Ā x_{k-1} + B̄ u_k,   x_{-1} = 0        y_k = C x_k + D u_k

Unrolled, the same map is a causal convolution with the kernel K (convolutional
mode, all tokens at once):

    y_k = sum_{j=0}^{k} K_j u_{k-j} + D u_k,      K_j = C Ā^j B̄

``ssm_kernel`` computes K, ``lti_recurrence`` runs the recurrence, and
``causal_conv`` applies a kernel: directly (naive, O(L²)), through an FFT padded
to 2L (vectorized, O(L log L)), or as a block-Toeplitz matrix product on the
tensor cores (triton, O(L²) but at matrix-unit speed; ``kernels/causal_conv.py``).

Bad input (a wrong rank, mismatched sizes, tensors on different devices, an
unsupported dtype) raises ValueError or TypeError, naming the argument,
before any work. NaN and inf in the inputs are not checked for (the check
would cost a GPU synchronisation per call): they propagate into the outputs
that depend on them, and through the FFT of ``causal_conv``'s vectorized
version a single NaN reaches every output of its channel.
"""

from __future__ import annotations

import torch

from ._dispatch import dispatch
from ._validate import Shapes, check_dtype, check_length, check_same_device
from .numerics import accumulation_dtype

__all__ = [
    "ssm_kernel",
    "ssm_kernel_naive",
    "ssm_kernel_vectorized",
    "lti_recurrence",
    "causal_conv",
    "causal_conv_naive",
    "causal_conv_vectorized",
    "toeplitz",
]

_REAL = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_ANY = _REAL + (torch.complex64, torch.complex128)


# ----------------------------------------------------------------------------
# The kernel K_k = C Ā^k B̄
# ----------------------------------------------------------------------------


def ssm_kernel_naive(Ab, Bb, C, L):
    """The specification: K_k = C Ā^k B̄ by repeated multiplication, one k per iteration.

    Ab (..., N, N), Bb (..., N), C (..., N) -> K (..., L). The vector
    x = Ā^k B̄ is updated in place of a matrix power: L matrix-vector
    products, O(L N²) work, and L sequential steps.
    """
    x = Bb  # (..., N) = Ā^0 B̄
    K = []
    for _ in range(L):
        K.append((C * x).sum(-1))  # (...,) = C Ā^k B̄
        x = (Ab @ x.unsqueeze(-1)).squeeze(-1)  # (..., N) = Ā^{k+1} B̄
    return torch.stack(K, dim=-1)  # (..., L)


def ssm_kernel_vectorized(Ab, Bb, C, L):
    """The same K in log-depth: double the block of powers [B̄, ĀB̄, ..., Ā^{m-1}B̄].

    With V = [Ā^j B̄ for j < m] (..., N, m) and P = Ā^m, the next block is
    [V, P V] and the next power P² (repeated squaring). ⌈log2 L⌉ rounds of
    matrix products replace L sequential steps; the total work is still
    O(L N²) plus O(N³ log L) for the squarings. Exact for every Ā: no
    eigendecomposition, so non-diagonalisable matrices are fine.
    """
    V = Bb.unsqueeze(-1)  # (..., N, 1)
    P = Ab  # (..., N, N) = Ā^m with m = V.shape[-1]
    while V.shape[-1] < L:
        V = torch.cat([V, P @ V], dim=-1)  # (..., N, 2m)
        if V.shape[-1] < L:
            P = P @ P
    return (C.unsqueeze(-2) @ V[..., :L]).squeeze(-2)  # (..., L)


def ssm_kernel(Ab, Bb, C, L, impl="auto"):
    """Convolution kernel of a discrete SISO LTI system (API.md).

    Args:
        Ab: (N, N) state matrix Ā, or a batch of systems (..., N, N).
        Bb: (N,) input vector B̄ (batch dims as Ab).
        C: (N,) output vector (batch dims as Ab).
        L: kernel length, an int >= 1.
        impl: ``"naive"`` (repeated multiplication), ``"vectorized"``
            (repeated squaring, log depth) or ``"auto"`` (= vectorized).
    Returns:
        K (..., L) with K[..., k] = C Ā^k B̄, in the promoted input dtype.
    """
    op = "ssm_kernel"
    fn = dispatch(op, impl, (Ab, Bb, C), naive=ssm_kernel_naive, vectorized=ssm_kernel_vectorized)
    shapes = Shapes(op)
    if not isinstance(Ab, torch.Tensor) or Ab.dim() < 2:
        raise ValueError(f"{op}: Ab must have shape (N, N) or (..., N, N); got {tuple(getattr(Ab, 'shape', ()))}")
    shapes.check("Ab", Ab, "... N N")
    shapes.check("Bb", Bb, "... N")
    shapes.check("C", C, "... N")
    check_same_device(op, Ab=Ab, Bb=Bb, C=C)
    for name, x in (("Ab", Ab), ("Bb", Bb), ("C", C)):
        check_dtype(op, name, x, _ANY)
    check_length(op, L)
    out = torch.promote_types(torch.promote_types(Ab.dtype, Bb.dtype), C.dtype)
    work = accumulation_dtype(out)
    return fn(Ab.to(work), Bb.to(work), C.to(work), L).to(out)


# ----------------------------------------------------------------------------
# Recurrent mode
# ----------------------------------------------------------------------------


def lti_recurrence(Ab, Bb, C, u, D=None):
    """Run the recurrence token by token (recurrent mode; API.md).

    x_k = Ā x_{k-1} + B̄ u_k from x_{-1} = 0, and y_k = C x_k + D u_k.

    Args:
        Ab: (N, N), Bb: (N,), C: (N,), one system shared by every sequence.
        u: (..., L) input sequences (any leading batch dims).
        D: skip term, a number or a 0-dim tensor; None means 0.
    Returns:
        y (..., L) in the promoted input dtype. The state x (..., N) is the
        only memory: O(L N²) work, O(N) memory per sequence, L sequential steps.
    """
    op = "lti_recurrence"
    shapes = Shapes(op)
    shapes.check("Ab", Ab, "N N")
    shapes.check("Bb", Bb, "N")
    shapes.check("C", C, "N")
    shapes.check("u", u, "... L")
    shapes.nonempty("L")
    if isinstance(D, torch.Tensor) and D.dim() != 0:
        raise ValueError(f"{op}: D must be a number or a 0-dim tensor; got shape {tuple(D.shape)}")
    if D is not None and not isinstance(D, (torch.Tensor, int, float)) or isinstance(D, bool):
        raise ValueError(f"{op}: D must be a number or a 0-dim tensor; got {D!r}")
    check_same_device(op, Ab=Ab, Bb=Bb, C=C, u=u, D=D)
    for name, x in (("Ab", Ab), ("Bb", Bb), ("C", C), ("u", u)):
        check_dtype(op, name, x, _ANY)
    out = torch.promote_types(torch.promote_types(Ab.dtype, Bb.dtype), torch.promote_types(C.dtype, u.dtype))
    work = accumulation_dtype(out)
    Ab, Bb, C, uw = Ab.to(work), Bb.to(work), C.to(work), u.to(work)
    x = torch.zeros(*u.shape[:-1], Ab.shape[0], dtype=work, device=u.device)  # (..., N)
    ys = []
    for k in range(u.shape[-1]):
        x = x @ Ab.mT + Bb * uw[..., k, None]  # (..., N)
        ys.append(x @ C)  # (...,)
    y = torch.stack(ys, dim=-1)  # (..., L)
    if D is not None:
        y = y + (D.to(work) if isinstance(D, torch.Tensor) else D) * uw  # a Python float stays exact
    return y.to(out)


# ----------------------------------------------------------------------------
# Convolutional mode
# ----------------------------------------------------------------------------


def causal_conv_naive(u, K):
    """The specification: y_t = sum_{s <= t} K_{t-s} u_s, one output time per iteration.

    u (b, H, L), K (H, L) or (L,). O(L²) multiply-adds per channel.
    """
    L = u.shape[-1]
    ys = []
    for t in range(L):
        window = u[..., : t + 1]  # (b, H, t+1): u_0 .. u_t
        taps = K[..., : t + 1].flip(-1)  # (H, t+1): K_t .. K_0
        ys.append((taps * window).sum(-1))  # (b, H)
    return torch.stack(ys, dim=-1)  # (b, H, L)


def causal_conv_vectorized(u, K):
    """FFT convolution with both signals zero-padded to 2L.

    The product of two length-n DFTs is the DFT of their *circular*
    convolution: y_t = sum_s K_{(t-s) mod n} u_s. With n = 2L the wrapped terms
    (t - s < 0) meet only the zero padding of K, so the first L outputs are
    the causal (linear) convolution. O(L log L) per channel.
    """
    L = u.shape[-1]
    n = 2 * L
    Uf = torch.fft.rfft(u, n=n)  # (b, H, L + 1) complex
    Kf = torch.fft.rfft(K, n=n)  # (H, L + 1) or (L + 1,)
    return torch.fft.irfft(Uf * Kf, n=n)[..., :L]  # (b, H, L)


def causal_conv(u, K, impl="auto"):
    """Causal convolution of each channel with its kernel (API.md).

    y[b, h, t] = sum_{s <= t} K[h, t - s] u[b, h, s].

    Args:
        u: (batch, H, L) real input.
        K: (H, L) one kernel per channel, or (L,) shared by all channels.
        impl: ``"naive"`` (direct loop), ``"vectorized"`` (FFT padded to 2L),
            ``"triton"`` (block-Toeplitz product on the tensor cores; float32,
            bfloat16, float16; differentiable), or ``"auto"`` (triton for
            CUDA tensors, except float64, which goes to vectorized).
    Returns:
        y (batch, H, L) in the promoted dtype of u and K; accumulation in
        float32 (float64 for float64 inputs, naive and vectorized only).
    """
    op = "causal_conv"
    fn = dispatch(op, impl, (u, K), naive=causal_conv_naive, vectorized=causal_conv_vectorized,
                  triton="causal_conv:causal_conv_triton")
    shapes = Shapes(op)
    shapes.check("u", u, "b H L")
    shapes.check("K", K, "H L", "L")
    shapes.nonempty("L")
    check_same_device(op, u=u, K=K)
    check_dtype(op, "u", u, _REAL)
    check_dtype(op, "K", K, _REAL)
    out = torch.promote_types(u.dtype, K.dtype)
    if impl == "auto" and out == torch.float64:  # the kernel computes in at most float32
        fn = causal_conv_vectorized
    if fn not in (causal_conv_naive, causal_conv_vectorized):  # the Triton launcher handles dtypes itself
        return fn(u.to(out), K.to(out))
    work = accumulation_dtype(out)
    return fn(u.to(work), K.to(work)).to(out)


def toeplitz(K):
    """The lower-triangular Toeplitz matrix T (..., L, L) with T[t, s] = K[t - s] for s <= t.

    y = T u is causal_conv for one channel: every diagonal of T holds one
    K_j, so equal lags t - s get equal weights.
    """
    Shapes("toeplitz").check("K", K, "... L")
    L = K.shape[-1]
    lag = torch.arange(L, device=K.device)[:, None] - torch.arange(L, device=K.device)[None, :]  # (L, L) t - s
    T = K[..., lag.clamp(min=0)]  # (..., L, L)
    return torch.where(lag >= 0, T, torch.zeros((), dtype=K.dtype, device=K.device))

