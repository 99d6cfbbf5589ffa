"""S4: the diagonal plus low-rank (DPLR) state space kernel (chapter 5).

Symbols -> code:  Λ -> Lambda,  P -> P,  B -> B,  C -> C,  C̃ = C(I - Ā^L) -> Ct,
Δ -> dt,  ω_j = exp(-2πij/L) -> omega,  g_j = (2/Δ)(1 - ω_j)/(1 + ω_j) -> g,
K̂ (the truncated generating function at ω_j) -> Khat,  V (eigenvectors) -> V.
Shapes: H channels, N state (all N modes, no conjugate halving), L length,
... any batch dims.

The continuous system of one channel is x' = A x + B u, y = Re(C x), with

    A = diag(Λ) - P P^*                                  (DPLR, rank 1)

discretised by the bilinear rule (Ā, B̄). Its convolution kernel
K_l = Re(C Ā^l B̄), l < L, is computed without a single power of Ā:

    K̂(ω_j) = Σ_{l<L} C Ā^l B̄ ω_j^l = C̃ (I - Ā ω_j)^{-1} B̄                (ω_j^L = 1)
           = (2/(1+ω_j)) C̃ (g_j I - A)^{-1} B                             (bilinear identity)
           = (2/(1+ω_j)) [k(C̃,B) - k(C̃,P) k(P̄,B) / (1 + k(P̄,P))]       (Woodbury)

with the Cauchy products k(a, b)_j = Σ_n a_n b_n / (g_j - Λ_n); then
K = Re(ifft(K̂)). ``cauchy`` is the one heavy operation (naive, vectorized,
Triton: ``kernels/cauchy.py``).

Bad input (a wrong rank, mismatched sizes, tensors on different devices, an
unsupported dtype, L < 1) raises ValueError or TypeError, naming the
argument, before any work; Δ must be finite and > 0 (ValueError). NaN and inf
in the inputs are not checked for (the check would cost a GPU
synchronisation per call): they propagate into the outputs (through the
inverse FFT, into the whole kernel of that channel). A point z equal to a
pole w divides by zero: inf or NaN, in every implementation.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._dispatch import dispatch, triton_available
from ._validate import Shapes, as_dt, check_dtype, check_length, check_same_device
from .convolution import causal_conv
from .discretize import discretize
from .hippo import hippo
from .numerics import accumulation_dtype

__all__ = [
    "cauchy",
    "cauchy_naive",
    "cauchy_vectorized",
    "nplr_legs",
    "DPLR_INITS",
    "dplr_init",
    "dplr_dense",
    "s4_ctilde",
    "s4_generating_kernel",
    "s4_kernel",
    "s4_kernel_naive",
    "s4_kernel_vectorized",
    "S4Layer",
    "S4Classifier",
]

_REAL = (torch.float32, torch.float64)
_ANY = _REAL + (torch.complex64, torch.complex128)
_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128,
               torch.complex64: torch.complex64, torch.complex128: torch.complex128}


# ----------------------------------------------------------------------------
# The Cauchy product
# ----------------------------------------------------------------------------


def cauchy_naive(v, z, w):
    """The specification: out[..., l] = Σ_n v[..., n] / (z[l] - w[..., n]), l by l.

    v, w (..., N) complex, z (L,) complex -> out (..., L).
    """
    return torch.stack([(v / (z[l] - w)).sum(-1) for l in range(z.shape[0])], dim=-1)


def cauchy_vectorized(v, z, w):
    """All (l, n) pairs at once: materialises the (..., L, N) matrix 1/(z_l - w_n)."""
    M = 1 / (z.unsqueeze(-1) - w.unsqueeze(-2))  # (..., L, N)
    return (v.unsqueeze(-2) * M).sum(-1)  # (..., L)


def cauchy(v, z, w, impl="auto"):
    """Cauchy product (API.md): out[..., l] = Σ_n v[..., n] / (z[l] - w[..., n]).

    Args:
        v: (..., N) numerators, complex (real is promoted).
        z: (L,) evaluation points, complex.
        w: (..., N) poles, complex, the same batch dims as v.
        impl: ``"naive"`` (loop over l), ``"vectorized"`` (one broadcast of
            size (..., L, N)), ``"triton"`` (tiles over L and N, never stores
            (..., L, N); complex64 only, differentiable) or ``"auto"`` (triton
            for complex64/float32 CUDA tensors, else vectorized).
    Returns:
        out (..., L), complex64 or complex128 (the promoted input dtype).
    """
    op = "cauchy"
    fn = dispatch(op, impl, (v, z, w), naive=cauchy_naive, vectorized=cauchy_vectorized,
                  triton="cauchy:cauchy_triton")
    shapes = Shapes(op)
    shapes.check("v", v, "... N")
    shapes.check("z", z, "L")
    shapes.check("w", w, "... N")
    shapes.nonempty("L")
    check_same_device(op, v=v, z=z, w=w)
    for name, x in (("v", v), ("z", z), ("w", w)):
        check_dtype(op, name, x, _ANY)
    out = _COMPLEX_OF[torch.promote_types(torch.promote_types(v.dtype, z.dtype), w.dtype)]
    if impl == "auto" and out == torch.complex128:  # the kernel computes in float32
        fn = cauchy_vectorized
    return fn(v.to(out), z.to(out), w.to(out))  # the Triton launcher checks its dtype itself


# ----------------------------------------------------------------------------
# HiPPO-LegS in normal plus low-rank form
# ----------------------------------------------------------------------------


def nplr_legs(N):
    """HiPPO-LegS as normal plus low rank, diagonalised by a unitary V (all N modes).

    With P_n = √(n + ½), A + P Pᵀ = -½ I + S where S is skew-symmetric. The
    Hermitian matrix -iS has an orthonormal eigenbasis V (torch.linalg.eigh),
    -iS = V diag(μ) V^*, so A = V (diag(Λ) - P̃ P̃^*) V^* with Λ = -½ + iμ,
    P̃ = V^* P and B̃ = V^* B.

    Returns:
        (Lambda (N,), P (N,), B (N,), V (N, N)), complex128 on the CPU. The
        DPLR system (diag(Λ) - P P^*, B, C V) is LegS in the basis V.
    """
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"nplr_legs: N must be an int >= 1; got {N!r}")
    A, B = hippo(N, "legs")  # (N, N), (N,) float64
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)  # (N,)
    S = A + torch.outer(P, P)  # = -½ I + skew
    skew = 0.5 * (S - S.T)  # exactly skew-symmetric
    mu, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # (N,), (N, N) unitary
    Lambda = -0.5 + 1j * mu.to(torch.complex128)  # Re Λ = mean of diag(S) = -½ exactly
    Vh = V.conj().T
    return Lambda, Vh @ P.to(torch.complex128), Vh @ B.to(torch.complex128), V


DPLR_INITS = ("legs", "random")


def dplr_init(N, init="legs"):
    """(Λ, P, B) (N,) complex128 of one channel's DPLR system A = diag(Λ) - P P^*.

    ``"legs"``: HiPPO-LegS in NPLR form (``nplr_legs``). ``"random"``: the
    same decay and the same sizes with none of the structure: Re Λ = -½
    (as LegS), Im Λ_n = e^{ξ_n} with ξ_n ~ N(0, 1) (the S4 code's random
    option), and P, B complex Gaussian directions scaled to LegS's norms
    (‖P‖² = Σ (n + ½) = N²/2, ‖B‖² = Σ (2n + 1) = N²). Draws from torch's
    global generator (seed it with ``torch.manual_seed``).
    """
    if init == "legs":
        return nplr_legs(N)[:3]
    if init != "random":
        raise ValueError(f"dplr_init: unknown init={init!r}; valid: {', '.join(map(repr, DPLR_INITS))}")
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"dplr_init: N must be an int >= 1; got {N!r}")
    Lambda = torch.complex(torch.full((N,), -0.5, dtype=torch.float64), torch.randn(N, dtype=torch.float64).exp())
    P, B = torch.randn(2, N, dtype=torch.complex128)
    return Lambda, P * (N / math.sqrt(2)) / P.norm(), B * N / B.norm()


def dplr_dense(Lambda, P):
    """The dense A = diag(Λ) - P P^* (..., N, N) of a DPLR system given Λ, P (..., N)."""
    return torch.diag_embed(Lambda) - P.unsqueeze(-1) * P.conj().unsqueeze(-2)


# ----------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------


def _bilinear(Lambda, P, B, dt):
    """Dense bilinear Ā, B̄ (H, N, N), (H, N) of A = diag(Λ) - P P^* (the reference only)."""
    return discretize(dplr_dense(Lambda, P), B, dt, method="bilinear")


def s4_ctilde(Lambda, P, C, dt, L):
    """C̃ = C (I - Ā^L) (H, N): what S4 stores instead of C (one dense power, O(N³ log L)).

    Computed in complex128 whatever the input precision: when LΔ is small, Ā^L
    is close to I and the subtraction cancels (in float32 at Δ = 1e-3, L = 1,
    C̃ keeps only about three correct digits). The layer avoids the question by
    storing C̃ itself.
    """
    wide = [x.to(torch.complex128) for x in (Lambda, P, C)]
    Ab, _ = _bilinear(wide[0], wide[1], torch.zeros_like(wide[0]), dt.to(torch.float64))  # (H, N, N)
    AL = torch.linalg.matrix_power(Ab, L)  # (H, N, N)
    return (wide[2] - (wide[2].unsqueeze(-2) @ AL).squeeze(-2)).to(C.dtype)  # (H, N) row vector C (I - Ā^L)


def s4_generating_kernel(Lambda, P, B, Ct, dt, L, cauchy_impl="vectorized"):
    """K (H, L) from C̃: generating function, Woodbury, inverse FFT (module docstring).

    Lambda, P, B, Ct (H, N) complex, dt (H,) real. The layer calls this with
    its parameter C̃ directly; ``s4_kernel`` first turns C into C̃.
    ``cauchy_impl``: ``"vectorized"`` builds each channel's Cauchy matrix
    1/(z_l - w_n) once and multiplies it by the four numerators (the four
    products share z and w); ``"naive"`` and ``"triton"`` call ``cauchy``;
    ``"auto"`` is triton for complex64 CUDA tensors, else vectorized.
    """
    if cauchy_impl == "auto":
        fast = Lambda.is_cuda and Lambda.dtype == torch.complex64 and triton_available()
        cauchy_impl = "triton" if fast else "vectorized"
    real = Lambda.real.dtype
    j = torch.arange(L, dtype=torch.float64, device=Lambda.device)
    omega = torch.polar(torch.ones_like(j), -2 * math.pi * j / L)  # (L,) roots of unity
    omega = omega.to(Lambda.dtype)
    # g = (2/Δ)(1-ω)/(1+ω) per channel; Δ is pulled out so one z serves all channels:
    # 1/(g - Λ) = (Δ/2) / (z - ΔΛ/2) with z = (1-ω)/(1+ω). At ω = -1 (even L) z is huge,
    # not inf: ω is computed in float64, where 1 + exp(-iπ) = 1.2e-16 i.
    z = (1 - omega) / (1 + omega)  # (L,)
    w = (dt.to(real)[:, None] / 2) * Lambda  # (H, N) = ΔΛ/2
    Pc = P.conj()
    v = torch.stack([Ct * B, Ct * P, Pc * B, Pc * P])  # (4, H, N): the four numerators
    if cauchy_impl == "vectorized":  # they share z and w: one Cauchy matrix per channel
        M = 1 / (z[:, None] - w[:, None, :])  # (H, L, N), M[h, l, n] = 1/(z_l - w_hn)
        k = torch.einsum("khn,hln->khl", v, M)  # (4, H, L)
    else:
        k = cauchy(v, z, w.expand_as(v), impl=cauchy_impl)  # (4, H, L)
    k = k * (dt.to(real)[:, None] / 2)  # (4, H, L) = k(a, b) at g_j
    k00, k01, k10, k11 = k
    Khat = (2 / (1 + omega)) * (k00 - k01 * k10 / (1 + k11))  # (H, L) Woodbury, rank 1
    return torch.fft.ifft(Khat, n=L).real  # (H, L): K_l = Re Σ_j K̂_j ω_j^{-l} / L


def s4_kernel_naive(Lambda, P, B, C, dt, L):
    """The specification: dense Ā, B̄ (bilinear), then K_l = Re(C Ā^l B̄) one power at a time."""
    Ab, Bb = _bilinear(Lambda, P, B, dt)  # (H, N, N), (H, N)
    x, K = Bb, []
    for _ in range(L):
        K.append((C * x).sum(-1).real)  # (H,) = Re C Ā^l B̄
        x = (Ab @ x.unsqueeze(-1)).squeeze(-1)  # (H, N) = Ā^{l+1} B̄
    return torch.stack(K, dim=-1)  # (H, L)


def s4_kernel_vectorized(Lambda, P, B, C, dt, L):
    """S4's algorithm: C̃, four Cauchy products (vectorized), Woodbury, inverse FFT."""
    return s4_generating_kernel(Lambda, P, B, s4_ctilde(Lambda, P, C, dt, L), dt, L, "vectorized")


def _s4_kernel_triton(Lambda, P, B, C, dt, L):
    """S4's algorithm with the Cauchy products in the Triton kernel (complex64 only)."""
    return s4_generating_kernel(Lambda, P, B, s4_ctilde(Lambda, P, C, dt, L), dt, L, "triton")


def s4_kernel(Lambda, P, B, C, dt, L, impl="auto"):
    """DPLR (S4) convolution kernel, bilinear discretisation (API.md).

    Args:
        Lambda, P, B, C: (H, N) complex; A = diag(Λ) - P P^* per channel.
        dt: step Δ > 0, a float or a tensor (H,).
        L: kernel length, an int >= 1.
        impl: ``"naive"`` (dense powers of Ā, O(L N²)), ``"vectorized"``
            (generating function with vectorized Cauchy products),
            ``"triton"`` (the same with the Triton Cauchy kernel; complex64)
            or ``"auto"`` (triton for complex64 CUDA tensors, else vectorized).
    Returns:
        K (H, L) real (float32 for complex64 inputs, float64 for complex128),
        K[h, l] = Re(C[h] @ Ā[h]^l @ B̄[h]) (C is not conjugated).
    """
    op = "s4_kernel"
    fn = dispatch(op, impl, (Lambda, P, B, C), naive=s4_kernel_naive, vectorized=s4_kernel_vectorized,
                  triton="cauchy:cauchy_triton")  # checks that Triton is there; the kernel is the Cauchy product
    if fn not in (s4_kernel_naive, s4_kernel_vectorized):
        fn = _s4_kernel_triton
    shapes = Shapes(op)
    for name, x in (("Lambda", Lambda), ("P", P), ("B", B), ("C", C)):
        shapes.check(name, x, "H N")
    check_same_device(op, Lambda=Lambda, P=P, B=B, C=C)
    for name, x in (("Lambda", Lambda), ("P", P), ("B", B), ("C", C)):
        check_dtype(op, name, x, _ANY)
    check_length(op, L)
    out = _COMPLEX_OF[accumulation_dtype(torch.promote_types(torch.promote_types(Lambda.dtype, P.dtype),
                                                                torch.promote_types(B.dtype, C.dtype)))]
    real = torch.float64 if out == torch.complex128 else torch.float32
    dt = as_dt(op, dt, Lambda.real if Lambda.is_complex() else Lambda, (shapes["H"],))
    if impl == "auto" and out == torch.complex128:  # the kernel computes in float32
        fn = s4_kernel_vectorized
    return fn(*(x.to(out) for x in (Lambda, P, B, C)), dt.to(real).expand(shapes["H"]), L)


# ----------------------------------------------------------------------------
# The S4 layer and a small classifier
# ----------------------------------------------------------------------------


class S4Layer(nn.Module):
    """One S4 layer on (batch, H, L): kernel, FFT convolution, D skip, GELU, GLU projection.

    Parameters (per channel h, N modes): log_dt (H,), Λ (H, N) with Re Λ < 0,
    P (H, N), B (H, N), C̃ (H, N) (stored instead of C), D (H,). Complex
    parameters are stored as real views (..., 2). Initialisation: (Λ, P, B)
    from ``dplr_init(N, init)`` (HiPPO-LegS in NPLR form by default, the
    same in every channel), C ~ CN(0, 1) turned into C̃ for the length
    ``L_max``, log Δ ~ U[log dt_min, log dt_max], D ~ N(0, 1). The kernel's
    Cauchy products run in the Triton kernel on a GPU (complex64), else
    vectorized.
    """

    def __init__(self, H, N, L_max, dt_min=1e-3, dt_max=1e-1, init="legs"):
        super().__init__()
        for name, value in (("H", H), ("N", N), ("L_max", L_max)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"S4Layer: {name} must be an int >= 1; got {value!r}")
        self.H, self.N, self.L_max = H, N, L_max
        Lambda, P, B = dplr_init(N, init)
        self.log_dt = nn.Parameter(math.log(dt_min) + torch.rand(H) * (math.log(dt_max) - math.log(dt_min)))
        C = torch.randn(H, N, dtype=torch.complex128)  # CN(0, 1)
        dt = self.log_dt.detach().double().exp()
        rep = lambda x: x.expand(H, N).clone()  # noqa: E731  (one copy per channel)
        Ct = s4_ctilde(rep(Lambda), rep(P), C, dt, L_max)
        for name, x in (("Lambda", rep(Lambda)), ("P", rep(P)), ("B", rep(B)), ("Ct", Ct)):
            self.register_parameter(name, nn.Parameter(torch.view_as_real(x.to(torch.complex64)).clone()))
        self.D = nn.Parameter(torch.randn(H))
        self.out = nn.Conv1d(H, 2 * H, 1)  # the GLU's two halves

    def ssm(self):
        """(Λ, P, B, C̃, Δ) as complex tensors; Re Λ is clamped below zero (stability)."""
        Lam = torch.view_as_complex(self.Lambda)
        Lam = torch.complex(Lam.real.clamp(max=-1e-4), Lam.imag)
        c = lambda name: torch.view_as_complex(getattr(self, name))  # noqa: E731
        return Lam, c("P"), c("B"), c("Ct"), self.log_dt.exp()

    def kernel(self, L):
        """K (H, L) for L <= L_max (C̃ belongs to L_max; shorter kernels are its prefix)."""
        Lam, P, B, Ct, dt = self.ssm()
        return s4_generating_kernel(Lam, P, B, Ct, dt, self.L_max, cauchy_impl="auto")[:, :L]

    def forward(self, u):
        """u (batch, H, L) -> (batch, H, L), L <= L_max."""
        shapes = Shapes("S4Layer")
        shapes.sizes["H"] = self.H
        shapes.check("u", u, "batch H L")
        if u.shape[-1] > self.L_max:
            raise ValueError(f"S4Layer: u has length L = {u.shape[-1]} > L_max = {self.L_max} (C̃ belongs to L_max)")
        K = self.kernel(u.shape[-1])  # (H, L)
        y = causal_conv(u, K, impl="vectorized") + self.D[:, None] * u  # (batch, H, L)
        return F.glu(self.out(F.gelu(y)), dim=1)

    @torch.no_grad()
    def recurrent_system(self):
        """Dense (Ā, B̄, C) (H, N, N), (H, N), (H, N) in complex128 for recurrent mode.

        C is recovered from the stored C̃ = C (I - Ā^L) by one linear solve.
        """
        Lam, P, B, Ct, dt = (x.to(torch.complex128) if x.is_complex() else x.double() for x in self.ssm())
        Ab, Bb = _bilinear(Lam, P, B, dt)
        I = torch.eye(self.N, dtype=Ab.dtype, device=Ab.device)
        C = torch.linalg.solve((I - torch.linalg.matrix_power(Ab, self.L_max)).mT, Ct.unsqueeze(-1)).squeeze(-1)
        return Ab, Bb, C

    @torch.no_grad()
    def step(self, u_t, x, system):
        """One token: u_t (batch, H), state x (batch, H, N) complex -> (y_t (batch, H), new x).

        x_t = Ā x_{t-1} + B̄ u_t,   y_t = GLU(GELU(Re(C x_t) + D u_t)).
        """
        Ab, Bb, C = system
        x = torch.einsum("hnm,bhm->bhn", Ab, x) + Bb * u_t.to(x.dtype)[..., None]  # (batch, H, N)
        y = (x * C).sum(-1).real.to(u_t.dtype) + self.D * u_t  # (batch, H)
        return F.glu(self.out(F.gelu(y)[..., None]), dim=1)[..., 0], x


class S4Classifier(nn.Module):
    """Sequence classifier: linear encoder, ``depth`` pre-norm residual S4 layers, mean over time, linear decoder.

    Input (batch, L, d_input) -> logits (batch, n_classes). ``init``,
    ``dt_min`` and ``dt_max`` go to every ``S4Layer``.
    """

    def __init__(self, d_input, n_classes, H, N, L_max, depth=2, dropout=0.0, init="legs", dt_min=1e-3, dt_max=1e-1):
        super().__init__()
        self.encoder = nn.Linear(d_input, H)
        self.layers = nn.ModuleList(S4Layer(H, N, L_max, dt_min, dt_max, init) for _ in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(H) for _ in range(depth))
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(H, n_classes)

    def features(self, x):
        """(batch, L, d_input) -> per-step features (batch, L, H) (causal: step t sees x_0..x_t)."""
        h = self.encoder(x)  # (batch, L, H)
        for layer, norm in zip(self.layers, self.norms):
            h = h + self.drop(layer(norm(h).transpose(1, 2)).transpose(1, 2))
        return h

    def forward(self, x):
        return self.decoder(self.features(x).mean(1))

    @torch.no_grad()
    def stream(self, x):
        """Recurrent mode: read x (batch, L, d_input) one step at a time.

        Returns the per-step features (batch, L, H), which equal ``features(x)``,
        and the running prediction (batch, L, n_classes) after each step.
        """
        systems = [layer.recurrent_system() for layer in self.layers]
        states = [torch.zeros(x.shape[0], l.H, l.N, dtype=torch.complex128, device=x.device) for l in self.layers]
        feats, total, logits = [], 0, []
        for t in range(x.shape[1]):
            h = self.encoder(x[:, t])  # (batch, H)
            for i, (layer, norm) in enumerate(zip(self.layers, self.norms)):
                y, states[i] = layer.step(norm(h), states[i], systems[i])
                h = h + y
            feats.append(h)
            total = total + h
            logits.append(self.decoder(total / (t + 1)))
        return torch.stack(feats, 1), torch.stack(logits, 1)
