"""hippo, hippo_basis, hippo_reconstruct, hippo_memorize (chapter 4): tiers,
oracles, gradients, bad input."""

import math

import numpy as np
import pytest
import scipy.special as ss
import torch

from ssm_edu import (MEASURES, MEMORY_MEASURES, discretize, hippo, hippo_basis, hippo_memorize, hippo_reconstruct,
                     hippo_rmse, hippo_test_signal, sample_ages)
from ssm_edu.numerics import rel_error
from tiers import assert_tiers_agree

# ---------------------------------------------------------------- the matrices


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("N", [1, 2, 3, 8, 17])
def test_hippo_tiers(measure, N):
    for impl in ("naive", "vectorized", "auto"):
        A, B = hippo(N, measure, impl=impl)
        assert A.dtype == B.dtype == torch.float64 and A.shape == (N, N) and B.shape == (N,)
    A0, B0 = hippo(N, measure, impl="naive")
    A1, B1 = hippo(N, measure, impl="vectorized")
    assert rel_error(A1, A0) < 1e-15 and rel_error(B1, B0) < 1e-15  # the same formulas, rounded alike up to an ulp


def test_legs_entries_match_api():
    A, B = hippo(4, "legs")
    r = [math.sqrt(2 * n + 1) for n in range(4)]
    assert A[0, 0] == -1 and A[3, 3] == -4 and A[0, 3] == 0
    assert abs(A[2, 1] + r[2] * r[1]) < 1e-15 and torch.allclose(B, torch.tensor(r, dtype=torch.float64))


def _s4_transition(measure, N):
    """Independent oracle: S4's hippo.py construction (legs as T M T^-1)."""
    q = np.arange(N, dtype=np.float64)
    if measure == "legs":
        col, row = np.meshgrid(q, q)
        r = 2 * q + 1
        M = -(np.where(row >= col, r, 0) - np.diag(q))
        T = np.sqrt(np.diag(2 * q + 1))
        return T @ M @ np.linalg.inv(T), np.diag(T).copy()
    if measure == "legt":  # unhalved (the halving in hippo.py is a window of 2)
        R = (2 * q + 1) ** 0.5
        j, i = np.meshgrid(q, q)
        return -(R[:, None] * np.where(i < j, (-1.0) ** (i - j), 1) * R[None, :]), R
    if measure == "lagt":
        return np.eye(N) / 2 - np.tril(np.ones((N, N))), np.ones(N)
    # fout, unit window, as in S4's visualizations.py
    freqs = np.arange(N // 2)
    d = np.stack([np.zeros(N // 2), freqs], axis=-1).reshape(-1)[1:]
    A = 2 * np.pi * (-np.diag(d, 1) + np.diag(d, -1))
    b = np.zeros(N)
    b[0::2] = 2
    b[0] = 2**0.5
    return A - b[:, None] * b[None, :], b * 2**0.5


@pytest.mark.parametrize("measure", MEASURES)
def test_hippo_matches_s4_construction(measure):
    N = 8
    A_ref, B_ref = _s4_transition(measure, N)
    A, B = hippo(N, measure)
    assert rel_error(A, torch.from_numpy(A_ref)) < 1e-14 and rel_error(B, torch.from_numpy(B_ref)) < 1e-14


def test_legs_spectrum_and_normal_part():
    """Eigenvalues -1..-N; A + P Pᵀ with P_n = √(n + 1/2) is -I/2 plus a skew matrix."""
    N = 12
    A, _ = hippo(N, "legs")
    assert torch.equal(torch.diagonal(A), -torch.arange(1.0, N + 1, dtype=torch.float64))  # triangular
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    S = A + torch.outer(P, P) + 0.5 * torch.eye(N, dtype=torch.float64)
    assert (S + S.T).abs().max() < 1e-12


@pytest.mark.parametrize("N,measure,match", [
    (0, "legs", "N must be a positive int; got 0"),
    (-3, "legs", "N must be a positive int"),
    (2.5, "legs", "N must be a positive int; got 2.5"),
    (True, "legs", "N must be a positive int"),
    (4, "legendre", r"unknown measure='legendre'; valid: 'legs', 'legt', 'lagt', 'fout'"),
    (4, "legs_scaled", r"unknown measure='legs_scaled'"),
])
def test_hippo_bad_input(N, measure, match):
    with pytest.raises(ValueError, match=match):
        hippo(N, measure)


def test_hippo_bad_impl():
    with pytest.raises(ValueError, match=r"unknown impl='fast'; valid: 'auto', 'naive', 'vectorized'"):
        hippo(4, impl="fast")


# ---------------------------------------------------------------- the bases


def test_basis_matches_scipy():
    a = torch.linspace(0, 1, 7, dtype=torch.float64)
    N = 9
    n = np.arange(N)[None, :]
    x = a.numpy()[:, None]
    legt = np.sqrt(2 * n + 1) * (-1.0) ** n * ss.eval_legendre(n, 2 * x - 1)  # the spec's form
    legs = np.sqrt(2 * n + 1) * (-1.0) ** n * ss.eval_legendre(n, 1 - 2 * np.exp(-x))
    lagt = ss.eval_laguerre(n, 3 * x) * np.exp(-3 * x / 2)
    assert rel_error(hippo_basis(N, "legt", a), torch.from_numpy(legt)) < 1e-13
    assert rel_error(hippo_basis(N, "legs_scaled", a), torch.from_numpy(legt)) < 1e-13
    assert rel_error(hippo_basis(N, "legs", a), torch.from_numpy(legs)) < 1e-13
    assert rel_error(hippo_basis(N, "lagt", 3 * a), torch.from_numpy(lagt)) < 1e-13


@pytest.mark.parametrize("measure,weight,upper", [
    ("legt", lambda a: torch.ones_like(a), 1.0),
    ("fout", lambda a: torch.ones_like(a), 1.0),
    ("legs", lambda a: torch.exp(-a), 40.0),
    ("lagt", lambda a: torch.ones_like(a), 150.0),
])
def test_bases_are_orthonormal(measure, weight, upper):
    """∫ g_m g_n ω da = δ_mn (midpoint rule); the fout state 1 ("sin 0") is identically zero."""
    M, N = 400000, 10
    a = (torch.arange(M, dtype=torch.float64) + 0.5) * upper / M
    G = hippo_basis(N, measure, a)
    gram = (G * weight(a)[:, None]).T @ G * (upper / M)
    eye = torch.eye(N, dtype=torch.float64)
    if measure == "fout":
        eye[1, 1] = 0
    assert (gram - eye).abs().max() < 1e-5  # midpoint rule on a truncated range


@pytest.mark.parametrize("ages,match", [
    (torch.tensor([0.1, -0.2], dtype=torch.float64), "ages must be finite and >= 0"),
    (torch.tensor([float("nan")], dtype=torch.float64), "ages must be finite"),
    (torch.zeros(2, 2, dtype=torch.float64), r"ages must have shape \(M,\); got \(2, 2\)"),
    (torch.tensor([1, 2]), "ages has dtype int64"),
])
def test_basis_bad_input(ages, match):
    with pytest.raises(ValueError, match=match):
        hippo_basis(4, "legt", ages)


def test_basis_scaled_needs_fractions_and_reconstruct_checks():
    with pytest.raises(ValueError, match="fraction of the elapsed time"):
        hippo_basis(4, "legs_scaled", torch.tensor([0.5, 1.5], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"c must be a tensor of shape \(\.\.\., N\)"):
        hippo_reconstruct(torch.tensor(1.0), "legt", torch.zeros(3))
    with pytest.raises(ValueError, match="one device"):
        hippo_reconstruct(torch.zeros(3), "legt", torch.zeros(3, device="meta"))
    with pytest.raises(ValueError, match="unknown measure='chebyshev'"):
        hippo_reconstruct(torch.zeros(3), "chebyshev", torch.zeros(3))


def test_reconstruct_inverts_projection():
    """Project a polynomial of degree < N onto the LegT basis by quadrature; reconstruction is exact."""
    M, N = 20000, 6
    a = (torch.arange(M, dtype=torch.float64) + 0.5) / M
    f = 1 - 3 * a + 2 * a**3 - a**5
    c = hippo_basis(N, "legt", a).T @ f / M  # (N,)
    assert rel_error(hippo_reconstruct(c, "legt", a), f) < 1e-7
    assert hippo_reconstruct(c.float(), "legt", a).dtype == torch.float32


# ---------------------------------------------------------------- memorisation


MEMO_CASES = [
    dict(batch=(), L=1, N=1),
    dict(batch=(), L=37, N=5),
    dict(batch=(1,), L=64, N=8),
    dict(batch=(2, 3), L=50, N=3),
]


@pytest.mark.parametrize("measure", MEMORY_MEASURES)
@pytest.mark.parametrize("case", MEMO_CASES, ids=lambda c: f"b{c['batch']}-L{c['L']}-N{c['N']}")
def test_memorize_tiers(measure, case):
    def make(dtype, gen):
        u = torch.randn(*case["batch"], case["L"], generator=gen, dtype=torch.float64)
        return (u, case["N"], measure), dict(dt=0.02)

    assert_tiers_agree(hippo_memorize, make, ["vectorized"], dtypes=(torch.float32,), label=measure)


@pytest.mark.parametrize("measure", ["legs", "legt", "fout"])
@pytest.mark.parametrize("method", ["euler", "zoh", "backward_euler"])
def test_memorize_tiers_other_rules(measure, method):
    def make(dtype, gen):
        return (torch.randn(2, 40, generator=gen, dtype=torch.float64), 6, measure), dict(dt=0.01, method=method)

    assert_tiers_agree(hippo_memorize, make, ["vectorized"], dtypes=(), label=method)


def test_memorize_is_the_recurrence(gen):
    """Oracle: the recurrence written out with discretize, for one LTI and the scaled memory."""
    u = torch.randn(30, generator=gen, dtype=torch.float64)
    A, B = hippo(4, "legt")
    Ab, Bb = discretize(A, B, 0.05, method="bilinear")
    c, ref = torch.zeros(4, dtype=torch.float64), []
    for k in range(30):
        c = Ab @ c + Bb * u[k]
        ref.append(c)
    assert rel_error(hippo_memorize(u, 4, "legt", dt=0.05), torch.stack(ref)) < 1e-12
    A, B = hippo(4, "legs")
    c = torch.zeros(4, dtype=torch.float64)
    I = torch.eye(4, dtype=torch.float64)
    for k in range(1, 31):  # c' = (1/t)(Ac + Bu) at t = k, step 1 (HiPPOScale in S4's visualizations.py)
        c = torch.linalg.solve(I - A / (2 * k), (I + A / (2 * k)) @ c + B / k * u[k - 1])
    assert rel_error(hippo_memorize(u, 4, "legs_scaled")[-1], c) < 1e-12


def test_scaled_legs_is_timescale_invariant(gen):
    """The original LegS does not depend on Δ; the LTI LegS does."""
    u = torch.randn(40, generator=gen, dtype=torch.float64)
    assert torch.equal(hippo_memorize(u, 6, "legs_scaled", dt=0.1), hippo_memorize(u, 6, "legs_scaled", dt=0.001))
    assert rel_error(hippo_memorize(u, 6, "legs", dt=0.1), hippo_memorize(u, 6, "legs", dt=0.001)) > 0.1


@pytest.mark.parametrize("impl", ["naive", "vectorized"])
@pytest.mark.parametrize("measure", MEMORY_MEASURES)
def test_memorize_gradcheck(impl, measure, gen):
    u = torch.randn(2, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: hippo_memorize(u, 4, measure, dt=0.1, impl=impl), (u,))


def test_reconstruct_gradcheck(gen):
    c = torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    ages = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda c: hippo_reconstruct(c, "legs", ages), (c,))


def test_memorize_dtypes():
    u = torch.randn(3, 20)
    assert hippo_memorize(u, 4, "legt").dtype == torch.float32
    out = hippo_memorize(u.to(torch.bfloat16), 4, "legt")
    assert out.dtype == torch.bfloat16 and out.shape == (3, 20, 4)


@pytest.mark.parametrize("args,kwargs,match", [
    ((torch.zeros(()), 4), {}, r"u must be a tensor of shape \(\.\.\., L\) with L >= 1"),
    ((torch.zeros(3, 0), 4), {}, r"L >= 1"),
    (([1.0, 2.0], 4), {}, "u must be a tensor"),
    ((torch.zeros(5, dtype=torch.int64), 4), {}, "u has dtype int64"),
    ((torch.zeros(5, dtype=torch.complex64), 4), {}, "u has dtype complex64"),
    ((torch.zeros(5), 0), {}, "N must be a positive int"),
    ((torch.zeros(5), 4, "legx"), {}, r"unknown measure='legx'; valid: .*'legs_scaled'"),
    ((torch.zeros(5), 4), dict(dt=0.0), r"dt must be real, finite and > 0"),
    ((torch.zeros(5), 4), dict(dt=-1.0), r"dt must be real, finite and > 0"),
    ((torch.zeros(5), 4), dict(dt=torch.ones(2)), r"dt must be a float or a 0-dim tensor"),
    ((torch.zeros(5), 4), dict(method="rk4"), r"unknown method='rk4'"),
    ((torch.zeros(5), 4), dict(impl="triton"), r"unknown impl='triton'"),
])
def test_memorize_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        hippo_memorize(*args, **kwargs)


# ---------------------------------------------------------------- the chapter's table


def test_test_signal():
    t, u = hippo_test_signal(1000)
    assert t[-1] == 1.0 and abs(u.pow(2).mean().sqrt().item() - 0.37) < 0.005
    assert abs(u[0].item()) < 1e-3  # starts smoothly: f(0) = f'(0) = 0, so u(Δ) = O(Δ^3)
    assert rel_error(sample_ages(4, 0.5), torch.tensor([1.75, 1.25, 0.75, 0.25], dtype=torch.float64)) == 0


@pytest.mark.heavy  # 116 s in the GPU test phase of 2026-12-07: started first there
def test_reconstruction_error_table():
    """The shape of ssm-spec §2's table (L = 1000, Δ = 1/L, bilinear): the error falls with N,
    the uniform-window memories reach < 1e-2 at N = 32, FouT converges slowly (the
    window's jump), LegS-LTI lags (its measure spreads over more than the signal), and LagT
    on a unit window does not work at all."""
    _, u = hippo_test_signal(1000)
    err = {m: [hippo_rmse(u, N, m) for N in (4, 8, 16, 32, 64)] for m in ("legt", "fout", "legs", "legs_scaled")}
    for m, e in err.items():
        assert 0.25 < e[0] < 0.4, (m, e)  # N = 4 remembers almost nothing of a 0.37-RMS signal
        assert all(b < a * 1.05 for a, b in zip(e, e[1:])), (m, e)
        assert e[4] < 0.03, (m, e)
    assert err["legt"][3] < 0.01 and err["legs_scaled"][3] < 0.01
    assert 0.01 < err["fout"][3] < 0.06 and 0.005 < err["fout"][4] < 0.03
    assert err["legs"][3] > 0.05 and err["legs"][4] < 0.02
    lagt_unit = [hippo_rmse(u, N, "lagt", last=500) for N in (16, 64)]
    lagt_long = [hippo_rmse(u, N, "lagt", dt=0.01, last=500) for N in (16, 64)]
    assert min(lagt_unit) > 0.2 and lagt_long[1] < 0.1
