"""Checked exercises of chapter 11 (limits of SSMs: recall, the delta rule, hybrids)."""

import math

import torch
import torch.nn.functional as F

from ..deltanet import delta_step
from . import Exercise, register


def _step_reference(S, q, k, v, beta, g):
    S = S.clone()
    o = delta_step(S, q, k, v, beta, g, scale=1.0 / math.sqrt(q.shape[-1]))
    return S, o


def _step_case(b, H, K, V, gen, decay=True, S_scale=1.0):
    unit = lambda: F.normalize(torch.randn(b, H, K, generator=gen, dtype=torch.float64), dim=-1)  # noqa: E731
    S = S_scale * torch.randn(b, H, K, V, generator=gen, dtype=torch.float64)
    v = torch.randn(b, H, V, generator=gen, dtype=torch.float64)
    beta = torch.rand(b, H, generator=gen, dtype=torch.float64)
    g = -torch.rand(b, H, generator=gen, dtype=torch.float64) if decay else torch.zeros(b, H, dtype=torch.float64)
    return S, unit(), unit(), v, beta, g


def _step_cases(gen):
    S, q, k, v, beta, g = _step_case(2, 3, 5, 4, gen)
    overwrite = (S, q, k, v, torch.ones_like(beta), torch.zeros_like(g))  # β = 1, α = 1: Sᵀk becomes v exactly
    return [
        ("a single head, batch 1, K = 1, V = 1", _step_case(1, 1, 1, 1, gen)),
        ("a zero state: the first step", _step_case(2, 2, 4, 3, gen, S_scale=0.0)),
        ("odd sizes: batch 3, H = 2, K = 7, V = 5", _step_case(3, 2, 7, 5, gen)),
        ("no decay (g = 0): DeltaNet", _step_case(2, 4, 8, 6, gen, decay=False)),
        ("β = 1 and g = 0: an overwrite", overwrite),
        ("K = 16, V = 32, strong decays", _step_case(1, 2, 16, 32, gen)),
    ]


register(Exercise(
    name="ch11.delta_step",
    signature="delta_step(S, q, k, v, beta, g) -> (S_new, o)",
    task="one step of the gated delta rule: S (b, H, K, V), q, k (b, H, K), v (b, H, V), beta, g (b, H); "
    "return the new state and o = S_newᵀ q / √K (do not modify S in place)",
    reference=_step_reference,
    cases=_step_cases,
    hint="Three moves, in this order: decay the whole state by α = exp(g); compute what the decayed state "
    "returns for k (Sᵀk, a (b, H, V) vector) and the correction u = β (v - Sᵀk); add the outer product k uᵀ. "
    "The output reads the new state with q and is scaled by 1/√K. Keep the batch and head axes in an einsum.",
    outputs=("S_new", "o"),
    tol=1e-10,
))


def _ut_reference(K, beta):
    C = K.shape[-2]
    A = torch.tril(beta[..., :, None] * (K @ K.mT), diagonal=-1)  # (..., C, C) strictly lower
    eye = torch.eye(C, dtype=K.dtype)
    return torch.linalg.solve_triangular(eye + A, eye.expand_as(A), upper=False, unitriangular=True)


def _ut_case(shape, C, Kdim, gen):
    K = F.normalize(torch.randn(*shape, C, Kdim, generator=gen, dtype=torch.float64), dim=-1)
    return K, torch.rand(*shape, C, generator=gen, dtype=torch.float64)


def _ut_cases(gen):
    return [
        ("a single step: a chunk of length 1, T = [[1]]", _ut_case((), 1, 4, gen)),
        ("C = 2, key size 1", _ut_case((), 2, 1, gen)),
        ("C = 5, key size 3 (more steps than key dimensions)", _ut_case((), 5, 3, gen)),
        ("a batch (2, 3) of chunks, C = 7, key size 4", _ut_case((2, 3), 7, 4, gen)),
        ("C = 16, key size 8", _ut_case((1,), 16, 8, gen)),
    ]


register(Exercise(
    name="ch11.ut_transform",
    signature="ut_transform(K, beta) -> T",
    task="the UT transform of one chunk: K (..., C, K) keys, beta (..., C); T (..., C, C) = "
    "(I + tril(diag(β) K Kᵀ, -1))^-1, by forward substitution",
    reference=_ut_reference,
    cases=_ut_cases,
    hint="I + A is unit lower triangular with A_ij = β_i k_iᵀk_j for j < i. Its inverse is lower triangular too, "
    "and row i of T follows from the rows before it: T_i = e_i - Σ_{j<i} A_ij T_j. Build T row by row "
    "(keep the batch axes in front), or check your answer against torch.linalg.solve_triangular.",
    tol=1e-10,
))
