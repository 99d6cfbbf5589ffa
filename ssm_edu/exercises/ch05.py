"""Checked exercises of chapter 5 (S4)."""

import math

import torch

from ..s4 import cauchy, dplr_dense, s4_ctilde, s4_generating_kernel
from . import Exercise, register

C128 = torch.complex128


def _ch05_cauchy_cases(gen):
    def c(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=gen, dtype=C128)

    return [
        ("one mode, one point: N = 1, L = 1", (c(1), c(1, scale=3.0), c(1))),
        ("N = 8, L = 16", (c(8), c(16, scale=3.0), c(8))),
        ("a batch of rows: v, w (3, 5), L = 7", (c(3, 5), c(7, scale=3.0), c(3, 5))),
        ("batch (2, 4), N = 16, L = 33", (c(2, 4, 16), c(33, scale=3.0), c(2, 4, 16))),
    ]


register(Exercise(
    name="ch05.cauchy",
    signature="cauchy(v, z, w) -> out",
    task="the Cauchy product out[..., l] = sum_n v[..., n] / (z[l] - w[..., n]); v, w (..., N) complex, z (L,) complex",
    reference=lambda v, z, w: cauchy(v, z, w, impl="naive"),
    cases=_ch05_cauchy_cases,
    hint="Broadcast z against w so that the difference has shape (..., L, N): z[:, None] - w[..., None, :]. "
    "Divide v (placed as v[..., None, :]) by it and sum over the last axis, n. The output has one entry "
    "per evaluation point z_l, not per mode.",
))


def _dplr(H, N, gen):
    """A random stable DPLR system per channel: (Λ, P, B, C) (H, N) with Re Λ in [-1, -0.1], P, B, C
    complex Gaussian, and Δ (H,) log-uniform in [1e-3, 1e-1]."""
    re = -0.1 - 0.9 * torch.rand(H, N, generator=gen, dtype=torch.float64)
    Lambda = torch.complex(re, 5 * torch.randn(H, N, generator=gen, dtype=torch.float64))
    P, B, C = (torch.randn(H, N, generator=gen, dtype=C128) for _ in range(3))
    dt = torch.exp(math.log(1e-3) + math.log(100) * torch.rand(H, generator=gen, dtype=torch.float64))
    return Lambda, 0.5 * P, B, C, dt


def _woodbury_reference(Lambda, P, B, Ct, g):
    """Ct (g_l I - A)^{-1} B for every point, by a dense solve: the oracle, not the method."""
    A = dplr_dense(Lambda, P)  # (N, N)
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    x = torch.linalg.solve(g[:, None, None] * eye - A, B.expand(g.shape[0], -1).unsqueeze(-1))
    return (Ct * x.squeeze(-1)).sum(-1)  # (L,)


def _woodbury_cases(gen):
    def case(N, L):
        Lambda, P, B, Ct = (x[0] for x in _dplr(1, N, gen)[:4])
        g = 1j * 20 * torch.randn(L, generator=gen, dtype=torch.float64)  # points on the imaginary axis
        return Lambda, P, B, Ct, g.to(C128)

    return [
        ("N = 1, a single point", case(1, 1)),
        ("N = 8, L = 16", case(8, 16)),
        ("N = 16, L = 33", case(16, 33)),
        ("N = 5, L = 40, a large low-rank part", (lambda a: (a[0], 4 * a[1], *a[2:]))(case(5, 40))),
    ]


register(Exercise(
    name="ch05.woodbury",
    signature="woodbury(Lambda, P, B, Ct, g) -> out",
    task="out[l] = Ct (g_l I - A)^{-1} B with A = diag(Lambda) - P P^*, through the Woodbury identity "
    "(four Cauchy sums, no matrix inverse); Lambda, P, B, Ct (N,) complex, g (L,) complex",
    reference=_woodbury_reference,
    cases=_woodbury_cases,
    hint="Write k(a, b)_l = sum_n a_n b_n / (g_l - Lambda_n) (broadcast g[:, None] against Lambda[None, :]). "
    "Then out = k(Ct, B) - k(Ct, P) k(conj(P), B) / (1 + k(conj(P), P)). The low-rank term is -P P^*, so "
    "the correction is subtracted and the denominator is 1 plus, not 1 minus; the conjugate sits on P in "
    "the middle two sums.",
))


def _ctilde_cases(gen):
    def case(H, N, L):
        Lambda, P, _, C, dt = _dplr(H, N, gen)
        return Lambda, P, C, dt, L

    return [
        ("H = 1, N = 1, L = 1", case(1, 1, 1)),
        ("H = 2, N = 4, L = 10", case(2, 4, 10)),
        ("H = 3, N = 8, L = 100", case(3, 8, 100)),
        ("H = 2, N = 16, L = 257", case(2, 16, 257)),
    ]


register(Exercise(
    name="ch05.ctilde",
    signature="ctilde(Lambda, P, C, dt, L) -> Ct",
    task="C̃ = C (I - Ā^L) per channel, with Ā the bilinear discretisation of A = diag(Lambda) - P P^* "
    "at step dt; Lambda, P, C (H, N) complex, dt (H,) real, Ct (H, N)",
    reference=s4_ctilde,
    cases=_ctilde_cases,
    hint="Build the dense A (H, N, N) (torch.diag_embed(Lambda) - P[..., :, None] * P.conj()[..., None, :]), "
    "then Ā = (I - Δ/2 A)^{-1} (I + Δ/2 A) with Δ of shape (H, 1, 1) and torch.linalg.solve, then "
    "torch.linalg.matrix_power(Ā, L). C is a row vector: C (I - Ā^L) multiplies from the left "
    "(C[..., None, :] @ M), not M @ C.",
))


def _kernel_cases(gen):
    def case(H, N, L):
        return (*_dplr(H, N, gen), L)  # C stands in for C̃: any vector will do

    return [
        ("H = 1, N = 1, L = 1", case(1, 1, 1)),
        ("H = 2, N = 4, L = 16", case(2, 4, 16)),
        ("H = 3, N = 8, L = 33 (odd)", case(3, 8, 33)),
        ("H = 2, N = 16, L = 64", case(2, 16, 64)),
    ]


register(Exercise(
    name="ch05.s4_kernel",
    signature="kernel(Lambda, P, B, Ct, dt, L) -> K",
    task="the S4 kernel K (H, L) from C̃: the generating function at the roots of unity by the bilinear "
    "identity and Woodbury, then an inverse FFT; Lambda, P, B, Ct (H, N) complex, dt (H,) real",
    reference=s4_generating_kernel,
    cases=_kernel_cases,
    hint="omega = exp(-2 pi i j / L) for j = 0..L-1 and g = (2/dt)(1 - omega)/(1 + omega), one row per "
    "channel: shape (H, L). Four Cauchy sums k(a, b) = sum_n a_n b_n / (g - Lambda_n), the Woodbury "
    "combination k(Ct, B) - k(Ct, P) k(conj P, B) / (1 + k(conj P, P)), times 2/(1 + omega); then "
    "K = torch.fft.ifft(Khat, n=L).real. (At omega = -1, 1 + omega is tiny but not zero in floating point: "
    "leave it.)",
))
