"""Continuous-time systems (chapter 1): closed forms, tiers, gradients, bad input."""

import math

import pytest
import torch

from ssm_edu import damped_oscillator, impulse_response, rc_filter, simulate, step_response
from ssm_edu.numerics import rel_error
from tiers import assert_tiers_agree


def test_rc_filter_closed_forms():
    tau = 0.7
    A, B, C, D = rc_filter(tau)
    t = torch.linspace(0, 5, 41, dtype=torch.float64)
    assert rel_error(impulse_response(A, B, C, t), torch.exp(-t / tau) / tau) < 1e-13
    assert rel_error(step_response(A, B, C, D, t)[1:], 1 - torch.exp(-t[1:] / tau)) < 1e-13


def test_damped_oscillator_closed_form_and_unit_gain():
    w0, zeta = 2.0, 0.25
    A, B, C, D = damped_oscillator(w0, zeta)
    wd = w0 * math.sqrt(1 - zeta**2)
    t = torch.linspace(0, 6, 61, dtype=torch.float64)
    # h(t) = w0^2 / wd * exp(-zeta w0 t) sin(wd t) for p'' + 2 zeta w0 p' + w0^2 p = w0^2 u
    expected = w0**2 / wd * torch.exp(-zeta * w0 * t) * torch.sin(wd * t)
    assert rel_error(impulse_response(A, B, C, t), expected) < 1e-12
    assert abs(step_response(A, B, C, D, torch.tensor([60.0], dtype=torch.float64)).item() - 1) < 1e-10
    assert torch.allclose(torch.linalg.eigvals(A), torch.tensor([complex(-zeta * w0, wd), complex(-zeta * w0, -wd)], dtype=torch.complex128))


@pytest.mark.parametrize("N,T", [(1, 1), (2, 7), (5, 33)])
def test_impulse_response_tiers(N, T):
    def make(dtype, gen):
        A = -torch.eye(N, dtype=torch.float64) + 0.3 * torch.randn(N, N, generator=gen, dtype=torch.float64)
        B, C = torch.randn(N, generator=gen, dtype=torch.float64), torch.randn(N, generator=gen, dtype=torch.float64)
        t = torch.sort(3 * torch.rand(T, generator=gen, dtype=torch.float64)).values
        return (A, B, C, t), {}

    assert_tiers_agree(impulse_response, make, ["vectorized"], dtypes=(torch.float32,))


def test_impulse_response_is_derivative_of_step_response():
    A, B, C, D = damped_oscillator(1.5, 0.4)
    t, h = torch.tensor([0.5, 1.3, 2.9], dtype=torch.float64), 1e-5
    slope = (step_response(A, B, C, D, t + h) - step_response(A, B, C, D, t - h)) / (2 * h)
    assert rel_error(slope, impulse_response(A, B, C, t)) < 1e-8


def test_simulate_rk4_matches_exact_step_response():
    A, B, C, D = damped_oscillator(2.0, 0.3)
    t = torch.linspace(0, 5, 26, dtype=torch.float64)
    y = simulate(A, B, C, D, lambda s: torch.ones((), dtype=torch.float64), t, substeps=20)
    assert rel_error(y, step_response(A, B, C, D, t)) < 1e-7


def test_step_response_at_time_zero_is_D():
    A, B, C, _ = rc_filter(1.0)
    assert step_response(A, B, C, torch.tensor(0.5, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)).item() == 0.5


@pytest.mark.parametrize("impl", ["naive", "vectorized"])
def test_impulse_response_gradcheck(impl):
    A = (-torch.eye(3, dtype=torch.float64) + 0.2 * torch.randn(3, 3, dtype=torch.float64)).requires_grad_()
    B = torch.randn(3, dtype=torch.float64, requires_grad=True)
    C = torch.randn(3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.7], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda A, B, C: impulse_response(A, B, C, t, impl=impl), (A, B, C))


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.zeros(2, 3), torch.zeros(2), torch.zeros(2), torch.zeros(4)), r"A must have shape \(N, N\)"),
        ((torch.zeros(2, 2), torch.zeros(3), torch.zeros(2), torch.zeros(4)), r"B must have shape \(N,\) = \(2,\); got \(3,\)"),
        ((torch.zeros(2, 2), torch.zeros(2), torch.zeros(2, 1), torch.zeros(4)), r"C must have shape \(N,\) = \(2,\); got \(2, 1\)"),
        ((torch.zeros(2, 2), torch.zeros(2), torch.zeros(2), torch.zeros(4, 1)), r"t must have shape \(T,\)"),
        ((torch.zeros(2, 2), torch.zeros(2), torch.zeros(2), torch.tensor([0.0, -1.0])), r"t must hold real, finite times >= 0"),
        ((torch.zeros(2, 2, dtype=torch.int32), torch.zeros(2), torch.zeros(2), torch.zeros(1)), r"A has dtype int32"),
        ((torch.zeros(2, 2), torch.zeros(2, device="meta"), torch.zeros(2), torch.zeros(1)), r"one device"),
    ],
)
def test_impulse_response_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        impulse_response(*args)


def test_rc_filter_rejects_nonpositive_tau():
    with pytest.raises(ValueError, match="tau must be > 0"):
        rc_filter(0.0)


# ---------------------------------------------------------------- modes and exact simulation


def test_modes_reproduce_the_impulse_response():
    from ssm_edu.continuous import impulse_response_modal, modes

    A, B, C, _ = damped_oscillator(2.0, 0.3)
    lam, r = modes(A, B, C)
    assert torch.allclose(lam.real, torch.full((2,), -0.6, dtype=torch.float64))
    t = torch.linspace(0, 4, 17, dtype=torch.float64)
    h = impulse_response_modal(A, B, C, t)
    assert h.dtype == torch.float64
    assert rel_error(h, impulse_response(A, B, C, t)) < 1e-12


def test_modal_formula_fails_at_critical_damping():
    """A defective A (repeated eigenvalue, one eigenvector): the modal formula is wrong
    while the matrix exponential is fine. This is chapter 1's failure mode."""
    from ssm_edu.continuous import impulse_response_modal

    A, B, C, _ = damped_oscillator(1.0, 1.0)
    t = torch.linspace(0, 5, 11, dtype=torch.float64)
    exact = t * torch.exp(-t)  # h(t) = w0^2 t e^{-w0 t} at zeta = 1, w0 = 1
    assert rel_error(impulse_response(A, B, C, t), exact) < 1e-12
    assert not rel_error(impulse_response_modal(A, B, C, t), exact) < 1e-6


def test_simulate_exact_matches_scipy_lsim_and_step_response(gen):
    import scipy.signal

    from ssm_edu.continuous import simulate_exact

    A, B, C, D = damped_oscillator(3.0, 0.2)
    t = 0.07 * torch.arange(40, dtype=torch.float64)  # lsim needs equal spacing
    u = torch.randn(40, generator=gen, dtype=torch.float64)
    y, X = simulate_exact(A, B, C, D, u, t)
    assert X.shape == (40, 2)
    _, y_ref, _ = scipy.signal.lsim((A.numpy(), B[:, None].numpy(), C[None].numpy(), D.reshape(1, 1).numpy()), u.numpy(), t.numpy(), interp=False)
    assert rel_error(y, torch.from_numpy(y_ref)) < 1e-12
    t = torch.cumsum(0.05 + 0.1 * torch.rand(40, generator=gen, dtype=torch.float64), 0) - 0.05  # uneven steps
    t[0] = 0.0
    ones = torch.ones_like(t)
    assert rel_error(simulate_exact(A, B, C, D, ones, t)[0], step_response(A, B, C, D, t)) < 1e-12


def test_simulate_exact_initial_state_decays_freely():
    from ssm_edu.continuous import simulate_exact

    A, B, C, D = rc_filter(0.5)
    t = torch.linspace(0, 2, 9, dtype=torch.float64)
    y, _ = simulate_exact(A, B, C, D, torch.zeros(9, dtype=torch.float64), t, x0=torch.tensor([2.0], dtype=torch.float64))
    assert rel_error(y, 2 * torch.exp(-t / 0.5)) < 1e-13


def test_simulate_exact_bad_input():
    from ssm_edu.continuous import simulate_exact

    A, B, C, D = rc_filter(1.0)
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"u must have shape \(T,\) = \(5,\); got \(4,\)"):
        simulate_exact(A, B, C, D, torch.zeros(4, dtype=torch.float64), t)
    with pytest.raises(ValueError, match="strictly increasing"):
        simulate_exact(A, B, C, D, torch.zeros(5, dtype=torch.float64), t.flip(0))
    with pytest.raises(ValueError, match=r"B must have shape \(N,\)"):
        from ssm_edu.continuous import modes

        modes(A, torch.zeros(2), C)
