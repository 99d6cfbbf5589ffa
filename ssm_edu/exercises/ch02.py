"""Checked exercises of chapter 2 (discretisation)."""

import torch

from ..continuous import damped_oscillator
from ..discretize import discretize, discretize_diag
from . import Exercise, register
from ._cases import stable_matrix, vec


def _ch02_zoh_cases(gen):
    def modes(n, complex_=True):
        re = -torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 0.05
        if not complex_:
            return re
        return torch.complex(re, 10 * torch.randn(n, generator=gen, dtype=torch.float64))

    def bvec(n, complex_=True):
        b = vec(n, gen)
        return torch.complex(b, vec(n, gen)) if complex_ else b

    return [
        ("real Λ, N = 4, Δ = 0.1", (modes(4, False), bvec(4, False), 0.1)),
        ("complex Λ, N = 7, Δ = 0.01", (modes(7), bvec(7), 0.01)),
        ("a single mode, N = 1, Δ = 1.0", (modes(1), bvec(1), 1.0)),
        ("a large step, Δ = 5", (modes(5), bvec(5), 5.0)),
        ("one Δ per channel, Lambda (3, 4), dt (3, 1)", (modes(12).reshape(3, 4), bvec(12).reshape(3, 4), torch.tensor([[1e-3], [1e-2], [1e-1]], dtype=torch.float64))),
    ]


def _ch02_bilinear_cases(gen):
    cases = []
    for n, dt in ((1, 0.1), (3, 0.01), (5, 1.0), (4, 10.0)):
        cases.append((f"N = {n}, Δ = {dt}", (stable_matrix(n, gen), vec(n, gen), dt)))
    osc = damped_oscillator(3.0, 0.2)
    cases.append(("damped oscillator, Δ = 0.05", (osc[0], osc[1], 0.05)))
    return cases


register(Exercise(
    name="ch02.zoh",
    outputs=("Ab", "Bb"),
    signature="zoh(Lambda, B, dt) -> (Ab, Bb)",
    task="ZOH for a diagonal system: Lambda (..., N) complex or real, B like it, dt a float or broadcastable tensor",
    reference=lambda lam, b, dt: discretize_diag(lam, b, dt, method="zoh", impl="naive"),
    cases=_ch02_zoh_cases,
    hint="Ā = exp(ΔΛ) elementwise; B̄ comes from integrating e^{Λs} over one step, "
    "(exp(ΔΛ) - 1) / Λ · B. Let broadcasting handle a dt of shape (H, 1).",
))

register(Exercise(
    name="ch02.bilinear",
    outputs=("Ab", "Bb"),
    signature="bilinear(A, B, dt) -> (Ab, Bb)",
    task="the bilinear (Tustin) rule for a dense A (N, N) and B (N,)",
    reference=lambda A, B, dt: discretize(A, B, dt, method="bilinear", impl="naive"),
    cases=_ch02_bilinear_cases,
    hint="Average the derivative at both ends of the step: (I - ΔA/2) x_k = (I + ΔA/2) x_{k-1} + ΔB u_k. "
    "Solve for x_k; torch.linalg.solve is more accurate than forming an inverse.",
))
