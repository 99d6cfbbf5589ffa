"""Checked exercises of chapter 7 (selective state spaces, Mamba)."""

import math

import torch

from ..selective import selective_state_update
from . import Exercise, register


def _reference_step(h, x, dt, A, B, C):
    """One step through the package's decoding step (on a copy of h)."""
    state = h.clone()
    y = selective_state_update(state, x, dt, A, B, C, impl="naive")
    return state, y


def _step_cases(gen):
    def case(b, D, N, log_dt=(-3.0, -1.0)):
        lo, hi = log_dt
        dt = torch.exp(math.log(10) * (lo + (hi - lo) * torch.rand(b, D, generator=gen, dtype=torch.float64)))
        A = -torch.exp(torch.randn(D, N, generator=gen, dtype=torch.float64))  # negative
        return (torch.randn(b, D, N, generator=gen, dtype=torch.float64),  # h
                torch.randn(b, D, generator=gen, dtype=torch.float64), dt, A,  # x, dt, A
                torch.randn(b, N, generator=gen, dtype=torch.float64),  # B
                torch.randn(b, N, generator=gen, dtype=torch.float64))  # C

    return [
        ("batch 1, one channel, N = 1", case(1, 1, 1)),
        ("batch 2, D = 3, N = 4", case(2, 3, 4)),
        ("batch 3, D = 5, N = 16, Δ in [1e-3, 1e-1]", case(3, 5, 16)),
        ("large Δ (up to 10): the old state is nearly forgotten", case(2, 4, 8, log_dt=(-1.0, 1.0))),
        ("tiny Δ (1e-5 .. 1e-4): the state barely moves", case(2, 7, 3, log_dt=(-5.0, -4.0))),
    ]


register(Exercise(
    name="ch07.selective_step",
    signature="selective_step(h, x, dt, A, B, C) -> (h_new, y)",
    task="one step of the selective SSM: h (b, D, N), x and dt (b, D) with dt > 0, A (D, N), B and C (b, N); "
    "h_new = exp(Δ A) h + Δ x B, y = <h_new, C> (no D, no gate)",
    reference=_reference_step,
    cases=_step_cases,
    hint="Broadcast Δ and x over the state dimension with [..., None], and B and C over the channels with "
    "[:, None, :]. The decay is exp(Δ A), elementwise; the input term is Δ x B (Mamba's B̄ = Δ B); and y "
    "reads the *new* state, summed over N.",
    outputs=("h_new", "y"),
))
