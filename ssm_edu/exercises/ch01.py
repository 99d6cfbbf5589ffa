"""Checked exercises of chapter 1 (continuous-time SSMs)."""

import torch

from ..continuous import damped_oscillator, impulse_response, rc_filter
from . import Exercise, register
from ._cases import stable_matrix, times, vec


def _ch01_impulse_cases(gen):
    cases = [
        ("RC filter, tau = 0.5", (*rc_filter(0.5)[:3], times(7, gen))),
        ("damped oscillator, zeta = 0.1", (*damped_oscillator(2.0, 0.1)[:3], times(9, gen))),
        ("a single time point, t = 0", (*damped_oscillator(1.0, 0.5)[:3], torch.zeros(1, dtype=torch.float64))),
    ]
    for n in (1, 3, 6):
        cases.append((f"random stable system, N = {n}", (stable_matrix(n, gen), vec(n, gen), vec(n, gen), times(11, gen))))
    return cases


def _ch01_stable_cases(gen):
    cases = [
        ("damped oscillator, zeta = 0.3", (damped_oscillator(1.0, 0.3)[0],)),
        ("undamped oscillator (eigenvalues on the imaginary axis)", (damped_oscillator(1.0, 0.0)[0],)),
        ("negative damping", (damped_oscillator(1.0, -0.05)[0],)),
        ("RC filter", (rc_filter(2.0)[0],)),
    ]
    for n in (2, 5):
        A = stable_matrix(n, gen)
        cases.append((f"random stable A, N = {n}", (A,)))
        cases.append((f"the same A shifted by +3 I, N = {n}", (A + 3 * torch.eye(n, dtype=A.dtype),)))
    return cases


def _is_stable_reference(A):
    return bool(torch.all(torch.linalg.eigvals(A).real < 0))


register(Exercise(
    name="ch01.impulse_response",
    outputs=("h",),
    signature="impulse_response(A, B, C, t) -> h",
    task="h(t) = C e^{At} B for A (N, N), B (N,), C (N,), t (T,); return h (T,)",
    reference=lambda A, B, C, t: impulse_response(A, B, C, t, impl="naive"),
    cases=_ch01_impulse_cases,
    hint="torch.linalg.matrix_exp computes e^{M}; evaluate it at A * t for each time t "
    "(or for all of them at once with a (T, N, N) batch).",
))

register(Exercise(
    name="ch01.is_stable",
    outputs=("is_stable",),
    signature="is_stable(A) -> bool",
    task="True when every solution of x' = Ax decays to 0",
    reference=_is_stable_reference,
    cases=_ch01_stable_cases,
    hint="Stability is read from the eigenvalues of A (torch.linalg.eigvals). "
    "Which part of an eigenvalue sets the growth of e^{λt}? Is 'on the boundary' stable?",
))

