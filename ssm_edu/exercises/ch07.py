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


def _reference_scan(x, dt, A, B, C):
    """The loop, with the last state: y (b, D, L), h (b, D, N)."""
    from ..selective import selective_scan

    return selective_scan(x, dt, A, B, C, return_last_state=True, impl="naive")


def _scan_cases(gen):
    def case(b, D, L, N, log_dt=(-3.0, -1.0)):
        lo, hi = log_dt
        dt = torch.exp(math.log(10) * (lo + (hi - lo) * torch.rand(b, D, L, generator=gen, dtype=torch.float64)))
        return (torch.randn(b, D, L, generator=gen, dtype=torch.float64), dt,  # x, Δ > 0
                -torch.exp(torch.randn(D, N, generator=gen, dtype=torch.float64)),  # A < 0
                torch.randn(b, N, L, generator=gen, dtype=torch.float64),  # B
                torch.randn(b, N, L, generator=gen, dtype=torch.float64))  # C

    return [
        ("batch 1, one channel, one step", case(1, 1, 1, 1)),
        ("L = 13: the last block is partial", case(2, 3, 13, 5)),
        ("N = 16, L = 20, batch 1", case(1, 4, 20, 16)),
        ("small Δ (1e-4 .. 1e-3): a long memory across the blocks", case(1, 2, 24, 3, log_dt=(-4.0, -3.0))),
    ]


register(Exercise(
    name="ch07.blocked_scan",
    signature="blocked_scan(x, dt, A, B, C) -> (y, h)",
    task="the selective scan by a Triton kernel that takes BLOCK_L steps per loop iteration (the first kernel one "
    "rung up): x, dt (b, D, L) with dt > 0, A (D, N), B, C (b, N, L); y (b, D, L) and the last state h (b, D, N); "
    "no D, no gate. Inputs arrive in float64 on the CPU: compute in float32, return float64",
    reference=_reference_scan,
    cases=_scan_cases,
    hint="Loop over blocks: load (BLOCK_D, BLOCK_L) tiles of x and Δ and (BLOCK_N, BLOCK_L) tiles of B and C with "
    "the mask t < L and other=0 (a step with Δ = 0 is the identity: a = 1, b = 0); a = exp(Δ A) and b = Δ x B "
    "are (BLOCK_D, BLOCK_N, BLOCK_L); the carried state enters the block's first step, b_0 <- a_0 h + b_0; scan "
    "along the last axis with chapter 6's combine; carry the state of the block's last step.",
    tol=1e-5,  # a float32 kernel (API.md's tolerance)
    outputs=("y", "h"),
))
