"""Checked exercises of chapter 6 (diagonal state spaces and parallel scans)."""

import math

import torch

from ..diagonal import s4d_kernel
from ..scan import scan_combine
from . import Exercise, register


def _pair(shape, gen):
    a = 0.5 + 0.5 * torch.rand(shape, generator=gen, dtype=torch.float64)
    return a, torch.randn(shape, generator=gen, dtype=torch.float64)


def _combine_cases(gen):
    cases = [
        ("scalars: a single step pair", (_pair((), gen), _pair((), gen))),
        ("vectors of length 5", (_pair((5,), gen), _pair((5,), gen))),
        ("a batch (3, 4)", (_pair((3, 4), gen), _pair((3, 4), gen))),
    ]
    one = (torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    cases.append(("the identity step (1, 0) on the left", (one, _pair((4,), gen))))
    # equal decays hide a swapped order in the first output, not in the second
    a = torch.full((6,), 0.9, dtype=torch.float64)
    cases.append(("equal decays, different inputs", ((a, torch.randn(6, generator=gen, dtype=torch.float64)),
                                                     (a.clone(), torch.randn(6, generator=gen, dtype=torch.float64)))))
    return cases


def _kernel_cases(gen):
    def case(H, N, L, init_imag=True):
        re = -0.1 - torch.rand(H, N, generator=gen, dtype=torch.float64)
        im = 10 * torch.rand(H, N, generator=gen, dtype=torch.float64) if init_imag else torch.zeros(H, N, dtype=torch.float64)
        A = torch.complex(re, im)
        B = torch.randn(H, N, generator=gen, dtype=torch.complex128)
        C = torch.randn(H, N, generator=gen, dtype=torch.complex128)
        dt = torch.exp(math.log(1e-3) + torch.rand(H, generator=gen, dtype=torch.float64) * math.log(100))
        return A, B, C, dt, L

    return [
        ("H = 1, N = 1, L = 1", case(1, 1, 1)),
        ("H = 2, N = 4, L = 50", case(2, 4, 50)),
        ("real modes (S4D-Real-like), H = 3, N = 8, L = 64", case(3, 8, 64, init_imag=False)),
        ("H = 4, N = 16, L = 257", case(4, 16, 257)),
    ]


register(Exercise(
    name="ch06.scan_combine",
    signature="combine((a1, b1), (a2, b2)) -> (a, b)",
    task="the scan operator: step (a1, b1) applied first, then (a2, b2), as one step x -> a x + b",
    reference=scan_combine,
    cases=_combine_cases,
    hint="Apply the first step to x, then the second to the result: a2 (a1 x + b1) + b2. Read off "
    "the coefficient of x and the constant. The second step's decay multiplies the first step's input, "
    "not the other way round.",
    outputs=("a", "b"),
))

register(Exercise(
    name="ch06.s4d_kernel",
    signature="s4d_kernel(A, B, C, dt, L) -> K",
    task="the ZOH Vandermonde kernel K (H, L) = 2 Re Σ_n C B̄ Ā^l of A, B, C (H, N) complex, dt (H,)",
    reference=lambda A, B, C, dt, L: s4d_kernel(A, B, C, dt, L, method="zoh", impl="naive"),
    cases=_kernel_cases,
    hint="ZOH: Ā = exp(Δ A) and B̄ = (Ā - 1) / A · B, with Δ of shape (H, 1) to broadcast over the "
    "modes. Ā^l = exp(l Δ A): build it for l = 0..L-1 at once, multiply by C B̄, sum over the modes, "
    "and do not forget the factor 2 and the real part (the conjugate modes are not stored).",
))
