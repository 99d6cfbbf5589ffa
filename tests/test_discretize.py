"""discretize and discretize_diag (chapter 2): tiers, oracles, gradients, bad input."""

import math

import numpy as np
import pytest
import scipy.signal
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssm_edu import METHODS, discretize, discretize_diag, init_log_dt, softplus_inverse
from ssm_edu.numerics import rel_error
from tiers import assert_tiers_agree


def stable_matrix(n, gen, batch=()):
    """Random dense A (batch..., n, n) with eigenvalue real parts in [-2, -0.1]."""
    Q, _ = torch.linalg.qr(torch.randn(*batch, n, n, generator=gen, dtype=torch.float64))
    decay = -(0.1 + 1.9 * torch.rand(*batch, n, generator=gen, dtype=torch.float64))
    S = torch.randn(*batch, n, n, generator=gen, dtype=torch.float64)
    return Q @ (torch.diag_embed(decay) + 0.5 * (S - S.mT)) @ Q.mT


# Sizes: N = 1, odd N, a batch of systems, multi-input B, and batch 1.
DENSE_CASES = [
    dict(N=1, M=None, batch=()),
    dict(N=5, M=None, batch=()),
    dict(N=4, M=3, batch=()),
    dict(N=3, M=None, batch=(1,)),
    dict(N=3, M=2, batch=(2, 3)),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", DENSE_CASES, ids=lambda c: f"N{c['N']}-M{c['M']}-b{c['batch']}")
def test_discretize_tiers(method, case):
    def make(dtype, gen):
        A = stable_matrix(case["N"], gen, case["batch"])
        B_shape = (*case["batch"], case["N"]) + ((case["M"],) if case["M"] else ())
        B = torch.randn(B_shape, generator=gen, dtype=torch.float64)
        # A per-system step for batched cases, log-uniform in the usual range.
        dt = init_log_dt(case["batch"], generator=gen, dtype=torch.float64).exp() if case["batch"] else 0.05
        return (A, B, dt), dict(method=method)

    # The literal ZOH formula cancels in float32 at small Δ (chapter 2); the
    # naive tier is the float64 specification, so only the fast tier is held
    # to the float32 tolerance there.
    assert_tiers_agree(discretize, make, ["vectorized"], dtypes=(torch.float32,), skip_naive_low=(method == "zoh"), label=method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("shape,dt_shape", [((1,), ()), ((7,), ()), ((3, 5), (3, 1)), ((1, 4), (1, 1))])
def test_discretize_diag_tiers(method, complex_, shape, dt_shape):
    def make(dtype, gen):
        re = -(0.05 + 2 * torch.rand(shape, generator=gen, dtype=torch.float64))
        lam = torch.complex(re, 5 * torch.randn(shape, generator=gen, dtype=torch.float64)) if complex_ else re
        B = torch.randn(shape, generator=gen, dtype=torch.float64)
        B = torch.complex(B, torch.randn(shape, generator=gen, dtype=torch.float64)) if complex_ else B
        dt = init_log_dt(dt_shape, generator=gen, dtype=torch.float64).exp() if dt_shape else 0.03
        return (lam, B, dt), dict(method=method)

    assert_tiers_agree(discretize_diag, make, ["vectorized"], dtypes=(torch.float32,), skip_naive_low=(method == "zoh"), label=method)


SCIPY_METHOD = {"zoh": "zoh", "bilinear": "bilinear", "euler": "euler", "backward_euler": "backward_diff"}


@pytest.mark.parametrize("impl", ["naive", "vectorized"])
@pytest.mark.parametrize("method", list(SCIPY_METHOD))
def test_discretize_matches_scipy(impl, method, gen):
    """Independent oracle: scipy.signal.cont2discrete. It also rewrites C and D for
    bilinear and backward_diff; the book (like S4 and S5) never changes them, so only
    Ā and B̄ are compared."""
    A, B = stable_matrix(4, gen), torch.randn(4, 2, generator=gen, dtype=torch.float64)
    dt = 0.3
    Ad, Bd, *_ = scipy.signal.cont2discrete((A.numpy(), B.numpy(), np.eye(4), np.zeros((4, 2))), dt, method=SCIPY_METHOD[method])
    Ab, Bb = discretize(A, B, dt, method=method, impl=impl)
    assert rel_error(Ab, torch.from_numpy(Ad)) < 1e-12
    assert rel_error(Bb, torch.from_numpy(Bd)) < 1e-12


def test_zoh_is_exact_for_piecewise_constant_input(gen):
    """ZOH's recurrence equals the continuous system sampled at the step ends when u
    is held constant over each step (its defining property). Oracle: superposition of
    the continuous step response S(t) of chapter 1. With x_{-1} = 0 at time 0 and u_k
    held on (k Δ, (k+1) Δ], y((k+1) Δ) = sum_{j <= k} (u_j - u_{j-1}) S((k + 1 - j) Δ)."""
    from ssm_edu import damped_oscillator, step_response

    A, B, C, D = damped_oscillator(3.0, 0.3)
    dt, K = 0.2, 15
    u = torch.randn(K, generator=gen, dtype=torch.float64)
    Ab, Bb = discretize(A, B, dt)
    x, ys = torch.zeros(2, dtype=torch.float64), []
    for k in range(K):
        x = Ab @ x + Bb * u[k]
        ys.append(C @ x)
    S = step_response(A, B, C, D, dt * torch.arange(1, K + 1, dtype=torch.float64))  # S(m Δ), m = 1..K
    jumps = torch.diff(u, prepend=torch.zeros(1, dtype=torch.float64))
    y_exact = torch.stack([sum(jumps[j] * S[k - j] for j in range(k + 1)) for k in range(K)])
    assert rel_error(torch.stack(ys), y_exact) < 1e-12


def test_zoh_block_exponential_handles_singular_A():
    """An integrator (A = 0): the literal formula needs A^-1, the block exponential does not."""
    A, B = torch.zeros(2, 2, dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64)
    Ab, Bb = discretize(A, B, 0.5, impl="vectorized")
    assert torch.allclose(Ab, torch.eye(2, dtype=torch.float64)) and torch.allclose(Bb, 0.5 * B)
    with pytest.raises(RuntimeError):
        discretize(A, B, 0.5, impl="naive")
    Ab, Bb = discretize_diag(torch.zeros(3), torch.ones(3), 0.25)
    assert torch.allclose(Bb, torch.full((3,), 0.25))


def test_vectorized_zoh_is_accurate_in_float32_at_small_dt(gen):
    A = stable_matrix(6, gen)
    B = torch.randn(6, generator=gen, dtype=torch.float64)
    ref = discretize(A, B, 1e-3, impl="naive")[1]
    fast = discretize(A.float(), B.float(), 1e-3, impl="vectorized")[1]
    naive32 = discretize(A.float(), B.float(), 1e-3, impl="naive")[1]
    assert rel_error(fast, ref) < 1e-5
    assert rel_error(naive32, ref) > 10 * rel_error(fast, ref)  # the cancellation chapter 2 shows


@pytest.mark.parametrize("method", METHODS)
def test_diag_equals_dense_on_a_diagonal_matrix(method, gen):
    lam = -(0.1 + torch.rand(5, generator=gen, dtype=torch.float64))
    B = torch.randn(5, generator=gen, dtype=torch.float64)
    Ab_d, Bb_d = discretize_diag(lam, B, 0.4, method=method)
    Ab, Bb = discretize(torch.diag(lam), B, 0.4, method=method)
    assert rel_error(torch.diag(Ab_d), Ab) < 1e-12 and rel_error(Bb_d, Bb) < 1e-12


def test_exp_euler_approaches_zoh_at_first_order():
    """B̄ of exponential-Euler differs from ZOH's by O(Δ²): halving Δ quarters the gap."""
    lam, B = torch.tensor([-1.0, -3.0], dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    gaps = [(discretize_diag(lam, B, dt, "exp_euler")[1] - discretize_diag(lam, B, dt, "zoh")[1]).abs().max().item() for dt in (0.02, 0.01)]
    assert 3.8 < gaps[0] / gaps[1] < 4.2


@pytest.mark.parametrize("impl", ["naive", "vectorized"])
@pytest.mark.parametrize("method", METHODS)
def test_discretize_gradcheck(impl, method, gen):
    A = stable_matrix(3, gen).requires_grad_()
    B = torch.randn(3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    dt = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda A, B, dt: discretize(A, B, dt, method=method, impl=impl), (A, B, dt))


@pytest.mark.parametrize("impl", ["naive", "vectorized"])
@pytest.mark.parametrize("method", METHODS)
def test_discretize_diag_gradcheck(impl, method, gen):
    lam = torch.complex(-torch.rand(4, dtype=torch.float64) - 0.1, torch.randn(4, dtype=torch.float64)).requires_grad_()
    B = torch.randn(4, dtype=torch.complex128, requires_grad=True)
    dt = torch.tensor([[0.1], [0.5]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda l, b, d: discretize_diag(l, b, d, method=method, impl=impl), (lam, B, dt))


def test_output_dtypes_follow_inputs():
    A = torch.randn(3, 3, dtype=torch.bfloat16)
    Ab, Bb = discretize(A - 3 * torch.eye(3, dtype=torch.bfloat16), torch.ones(3, dtype=torch.bfloat16), 0.1)
    assert Ab.dtype == Bb.dtype == torch.bfloat16
    Ab, Bb = discretize_diag(torch.tensor([-1.0 + 2j]), torch.tensor([1.0]), 0.1)
    assert Ab.dtype == torch.complex64 and Bb.dtype == torch.complex64


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.zeros(3), torch.zeros(3), 0.1), r"A must have shape \(N, N\)"),
        ((torch.zeros(3, 4), torch.zeros(3), 0.1), r"A must have shape \(\.\.\., N, N\)"),
        ((torch.zeros(3, 3), torch.zeros(4), 0.1), r"B must have shape \(\.\.\., N\) = \(3,\) or .*; got \(4,\)"),
        ((torch.zeros(3, 3), torch.zeros(4, 2), 0.1), r"B must have shape"),
        ((torch.zeros(2, 3, 3), torch.zeros(5, 3), 0.1), r"B must have shape"),
        ((torch.zeros(3, 3), torch.zeros(3), 0.0), r"dt must be real, finite and > 0"),
        ((torch.zeros(3, 3), torch.zeros(3), -1.0), r"dt must be real, finite and > 0"),
        ((torch.zeros(3, 3), torch.zeros(3), float("nan")), r"dt must be real, finite and > 0"),
        ((torch.zeros(3, 3), torch.zeros(3), "0.1"), r"dt must be a float or a tensor"),
        ((torch.zeros(2, 3, 3), torch.zeros(2, 3), torch.ones(3)), r"dt must be a float, a 0-dim tensor or have the batch shape \(2,\)"),
        ((torch.zeros(3, 3, dtype=torch.int64), torch.zeros(3), 0.1), r"A has dtype int64"),
    ],
)
def test_discretize_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        discretize(*args)


def test_bad_method_and_impl():
    A, B = -torch.eye(2), torch.ones(2)
    with pytest.raises(ValueError, match=r"unknown method='foo'; valid: 'zoh', 'bilinear'"):
        discretize(A, B, 0.1, method="foo")
    with pytest.raises(ValueError, match=r"unknown impl='fast'; valid: 'auto', 'naive', 'vectorized'"):
        discretize(A, B, 0.1, impl="fast")
    with pytest.raises(ValueError, match=r"unknown impl='triton'"):
        discretize_diag(A[0], B, 0.1, impl="triton")


def test_mixed_devices_rejected():
    with pytest.raises(ValueError, match="one device"):
        discretize(-torch.eye(2), torch.ones(2, device="meta"), 0.1)
    with pytest.raises(ValueError, match="one device"):
        discretize_diag(-torch.ones(2), torch.ones(2), torch.tensor(0.1, device="meta"))


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.ones(3), torch.ones(4), 0.1), r"must broadcast together; got Lambda \(3,\), B \(4,\)"),
        ((torch.ones(2, 3), torch.ones(2, 3), torch.ones(3, 1)), r"must broadcast together"),
        ((torch.tensor(1.0), torch.ones(1), 0.1), r"Lambda must have shape \(\.\.\., N\)"),
        ((torch.ones(3), torch.ones(3), torch.tensor([0.1, -0.1, 0.2])), r"dt must be real, finite and > 0"),
        (([1.0, 2.0], torch.ones(2), 0.1), None),
    ],
)
def test_discretize_diag_bad_input(args, match):
    if match is None:
        with pytest.raises(TypeError, match="Lambda must be a torch.Tensor"):
            discretize_diag(*args)
    else:
        with pytest.raises(ValueError, match=match):
            discretize_diag(*args)


# ---------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 6), batch=st.lists(st.integers(1, 3), max_size=2), log_dt=st.floats(-3, 0), method=st.sampled_from(METHODS), seed=st.integers(0, 2**16))
def test_discretize_property(N, batch, log_dt, method, seed):
    """Random shapes and steps: the tiers agree in float64, and a stable A gives a
    stable Ā for every rule but forward Euler."""
    gen = torch.Generator().manual_seed(seed)
    A, B = stable_matrix(N, gen, tuple(batch)), torch.randn(*batch, N, generator=gen, dtype=torch.float64)
    outs = [discretize(A, B, 10**log_dt, method=method, impl=i) for i in ("naive", "vectorized")]
    assert rel_error(outs[0][0], outs[1][0]) < 1e-9 and rel_error(outs[0][1], outs[1][1]) < 1e-9
    if method != "euler":
        assert torch.linalg.eigvals(outs[1][0]).abs().max() < 1


# ---------------------------------------------------------------- Δ initialisation


def test_init_log_dt_range_and_spread(gen):
    log_dt = init_log_dt(20000, generator=gen)
    assert math.log(1e-3) <= log_dt.min() and log_dt.max() <= math.log(1e-1)
    # log-uniform: each decade holds half of the samples
    frac = (log_dt < math.log(1e-2)).float().mean().item()
    assert abs(frac - 0.5) < 0.02
    with pytest.raises(ValueError, match="dt_max > dt_min"):
        init_log_dt(3, dt_min=0.1, dt_max=0.01)


def test_softplus_inverse_roundtrip():
    dt = torch.logspace(-4, 0, 50, dtype=torch.float64)
    assert rel_error(torch.nn.functional.softplus(softplus_inverse(dt)), dt) < 1e-12
    with pytest.raises(ValueError, match="dt must be real, finite and > 0"):
        softplus_inverse(torch.tensor([0.0]))


# ---------------------------------------------------------------- the layer stack of chapter 2's failure modes


def test_diag_ssm_stack_matches_a_hand_written_loop(gen):
    from ssm_edu.discretize import diag_ssm_stack

    H, N, L = 2, 3, 9
    lam = torch.complex(-torch.rand(H, N, generator=gen, dtype=torch.float64) - 0.1, torch.randn(H, N, generator=gen, dtype=torch.float64))
    B = torch.randn(H, N, generator=gen, dtype=torch.complex128)
    C = torch.randn(H, N, generator=gen, dtype=torch.complex128)
    u = torch.randn(H, L, generator=gen, dtype=torch.float64)
    outs = diag_ssm_stack(u, lam, B, C, 0.1, depth=1)
    assert len(outs) == 2 and outs[0] is u
    Ab, Bb = discretize_diag(lam, B, 0.1)
    for h in range(H):
        x, ys = torch.zeros(N, dtype=torch.complex128), []
        for k in range(L):
            x = Ab[h] * x + Bb[h] * u[h, k]
            ys.append((C[h] * x).sum().real)
        assert rel_error(outs[1][h], torch.stack(ys)) < 1e-14
    assert len(diag_ssm_stack(u, lam, B, C, 0.1, depth=0)) == 1


def test_diag_ssm_stack_bad_input():
    from ssm_edu.discretize import diag_ssm_stack

    with pytest.raises(ValueError, match=r"B must have shape \(H, N\) = \(2, 3\); got \(2, 4\)"):
        diag_ssm_stack(torch.zeros(2, 5), -torch.ones(2, 3), torch.ones(2, 4), torch.ones(2, 3), 0.1, 1)
    with pytest.raises(ValueError, match="depth must be an int >= 0"):
        diag_ssm_stack(torch.zeros(2, 5), -torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3), 0.1, -1)
