"""Checked exercises of chapter 4 (HiPPO)."""

from ..hippo import hippo
from . import Exercise, register


def _ch04_legs_cases(gen):
    # The matrices are deterministic; the sizes cover N = 1 (where a wrong
    # diagonal still passes), small N, an odd N and S4's N = 64.
    return [(f"N = {n}", (n,)) for n in (1, 2, 3, 8, 17, 64)]


register(Exercise(
    name="ch04.hippo_legs",
    outputs=("A", "B"),
    signature="hippo_legs(N) -> (A, B)",
    task="the HiPPO-LegS matrices: A (N, N) and B (N,), float64",
    reference=lambda N: hippo(N, "legs", impl="naive"),
    cases=_ch04_legs_cases,
    hint="Below the diagonal A[n, k] = -sqrt(2n+1) sqrt(2k+1); on it, -(n+1) (not -(2n+1): the "
    "derivative of the measure's 1/t contributes only n); above it, 0. B[n] = sqrt(2n+1). "
    "Return float64 tensors.",
))
