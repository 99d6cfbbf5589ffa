"""Checked exercises of chapter 9 (Mamba-3)."""

import torch

from ..mamba3 import trapezoid_weights
from . import Exercise, register


def _trapezoid_cases(gen):
    def case(*shape, lam=None):
        dt = torch.exp(torch.log(torch.tensor(1e-3)) + torch.rand(shape, generator=gen) * torch.log(torch.tensor(100.0)))
        A = -(1e-2 + 5 * torch.rand(shape, generator=gen))
        lam_ = torch.rand(shape, generator=gen) if lam is None else torch.full(shape, float(lam))
        return dt.double(), A.double(), lam_.double()

    return [
        ("a single step: shapes (1, 1, 1)", case(1, 1, 1)),
        ("batch 2, L = 7, H = 3", case(2, 7, 3)),
        ("λ = 1 everywhere (exponential Euler, Mamba-2)", case(1, 5, 2, lam=1)),
        ("λ = 0 everywhere (only the previous input)", case(1, 5, 2, lam=0)),
        ("λ = 1/2 (the classic trapezoid), batch 3, L = 33, H = 4", case(3, 33, 4, lam=0.5)),
    ]


register(Exercise(
    name="ch09.trapezoid_weights",
    signature="trapezoid_weights(dt, A, lam) -> (alpha, beta, gamma)",
    task="the exponential-trapezoidal coefficients of h_t = α h_{t-1} + β x_{t-1} k_{t-1}ᵀ + γ x_t k_tᵀ; "
    "dt, A, lam (batch, L, H), elementwise",
    reference=trapezoid_weights,
    cases=_trapezoid_cases,
    hint="α is the state's decay over one step, exp(Δ A). The trapezoid splits Δ between the two ends of "
    "the step: λ Δ goes to the current input, (1 - λ) Δ to the previous one. The previous input sits at the "
    "start of the step, so it decays through the whole step, like h_{t-1}.",
    outputs=("alpha", "beta", "gamma"),
))
