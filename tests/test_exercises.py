"""ssm_edu.exercises.check: passes the reference, fails wrong answers, and says why."""

import pytest
import torch

from ssm_edu import default_device, discretize, discretize_diag, hippo, impulse_response, selective_scan
from ssm_edu.exercises import _REGISTRY, check, exercises

def _s4_kernel_solution(Lam, P, B, Ct, dt, L, factor=True):
    """Chapter 5's kernel from C̃ (factor=False leaves out the bilinear factor 2/(1 + ω))."""
    om = torch.exp(-2j * torch.pi * torch.arange(L, dtype=torch.float64) / L)  # (L,)
    g = (2 / dt[:, None]) * (1 - om) / (1 + om)  # (H, L)
    k = lambda a, b: (a[:, None] * b[:, None] / (g[..., None] - Lam[:, None])).sum(-1)  # noqa: E731
    Khat = k(Ct, B) - k(Ct, P) * k(P.conj(), B) / (1 + k(P.conj(), P))
    return torch.fft.ifft(Khat * (2 / (1 + om) if factor else 1), n=L).real


def _bilinear_power(Lam, P, dt, L):
    """Ā^L (H, N, N) of the bilinear DPLR system."""
    A = torch.diag_embed(Lam) - P[..., :, None] * P.conj()[..., None, :]
    return torch.linalg.matrix_power(discretize(A, torch.zeros_like(Lam), dt, method="bilinear")[0], L)


# A correct solution and a deliberately wrong one for every registered exercise.
SOLUTIONS = {
    "ch01.impulse_response": (
        lambda A, B, C, t: torch.stack([C @ torch.linalg.matrix_exp(A * s) @ B for s in t]),
        lambda A, B, C, t: torch.stack([C @ (torch.eye(A.shape[0], dtype=A.dtype) + A * s) @ B for s in t]),  # first-order Taylor
    ),
    "ch01.is_stable": (
        lambda A: bool((torch.linalg.eigvals(A).real < 0).all()),
        lambda A: bool((torch.linalg.eigvals(A).real <= 0).all()),  # calls the undamped oscillator stable
    ),
    "ch02.zoh": (
        lambda lam, B, dt: (torch.exp(dt * lam), torch.expm1(dt * lam) / lam * B),
        lambda lam, B, dt: (torch.exp(dt * lam), dt * B),  # exponential-Euler's B̄
    ),
    "ch02.bilinear": (
        lambda A, B, dt: discretize(A, B, dt, method="bilinear"),
        lambda A, B, dt: discretize(A, B, dt, method="backward_euler"),
    ),
    "ch03.ssm_kernel": (
        lambda Ab, Bb, C, L: torch.stack([C @ torch.linalg.matrix_power(Ab, k) @ Bb for k in range(L)]),
        lambda Ab, Bb, C, L: torch.stack([C @ torch.linalg.matrix_power(Ab, k + 1) @ Bb for k in range(L)]),  # starts at Ā¹
    ),
    "ch03.fft_conv": (
        lambda u, K: torch.fft.irfft(torch.fft.rfft(u, n=2 * u.shape[-1]) * torch.fft.rfft(K, n=2 * u.shape[-1]), n=2 * u.shape[-1])[..., : u.shape[-1]],
        lambda u, K: torch.fft.irfft(torch.fft.rfft(u) * torch.fft.rfft(K), n=u.shape[-1]),  # no padding: circular
    ),
    "ch06.scan_combine": (
        lambda p, q: (q[0] * p[0], q[0] * p[1] + q[1]),
        lambda p, q: (p[0] * q[0], p[0] * q[1] + p[1]),  # the steps in the wrong order
    ),
    "ch06.s4d_kernel": (
        lambda A, B, C, dt, L: 2 * torch.einsum("hn,hnl->hl", C * torch.expm1(dt[:, None] * A) / A * B,
                                                torch.exp(dt[:, None, None] * A[..., None] * torch.arange(L, dtype=torch.float64))).real,
        lambda A, B, C, dt, L: torch.einsum("hn,hnl->hl", C * torch.expm1(dt[:, None] * A) / A * B,
                                            torch.exp(dt[:, None, None] * A[..., None] * torch.arange(L, dtype=torch.float64))).real,  # no 2
    ),
    "ch04.hippo_legs": (
        lambda N: hippo(N, "legs"),
        lambda N: (torch.tril(-torch.outer(hippo(N, "legs")[1], hippo(N, "legs")[1])), hippo(N, "legs")[1]),  # diagonal -(2n+1)
    ),
    "ch05.cauchy": (
        lambda v, z, w: (v[..., None, :] / (z[:, None] - w[..., None, :])).sum(-1),
        lambda v, z, w: (v[..., None, :] / (z[:, None] - w[..., None, :]) ** 2).sum(-1),  # squared denominator
    ),
    "ch05.woodbury": (
        lambda Lam, P, B, Ct, g: (lambda k: k(Ct, B) - k(Ct, P) * k(P.conj(), B) / (1 + k(P.conj(), P)))(
            lambda a, b: (a * b / (g[:, None] - Lam)).sum(-1)),
        lambda Lam, P, B, Ct, g: (lambda k: k(Ct, B) + k(Ct, P) * k(P.conj(), B) / (1 - k(P.conj(), P)))(
            lambda a, b: (a * b / (g[:, None] - Lam)).sum(-1)),  # A = diag(Λ) + P P^*: the sign flipped
    ),
    "ch05.ctilde": (
        lambda Lam, P, C, dt, L: C - (C[..., None, :] @ _bilinear_power(Lam, P, dt, L))[..., 0, :],
        lambda Lam, P, C, dt, L: C - (_bilinear_power(Lam, P, dt, L) @ C[..., :, None])[..., 0],  # Ā^L C, a column
    ),
    "ch05.s4_kernel": (
        _s4_kernel_solution,
        lambda *args: _s4_kernel_solution(*args, factor=False),  # without 2/(1 + ω)
    ),
    "primer.logsumexp": (
        lambda x: torch.logsumexp(x, -1),
        lambda x: torch.logsumexp(torch.nn.functional.pad(x, (0, (1 << (x.shape[-1] - 1).bit_length()) - x.shape[-1])), -1),  # masked lanes read as 0
    ),
    "ch07.selective_step": (
        lambda h, x, dt, A, B, C: (lambda hn: (hn, (hn * C[:, None, :]).sum(-1)))(
            torch.exp(dt[..., None] * A) * h + (dt * x)[..., None] * B[:, None, :]),
        lambda h, x, dt, A, B, C: (torch.exp(dt[..., None] * A) * h + (dt * x)[..., None] * B[:, None, :],
                                   (h * C[:, None, :]).sum(-1)),  # y reads the old state
    ),
    "ch07.blocked_scan": (
        lambda x, dt, A, B, C: tuple(t.cpu().double() for t in __import__("ssm_edu.kernels.selective_first",
                                                                           fromlist=["x"]).selective_scan_blocked(
            *(t.to(default_device(), torch.float32) for t in (x, dt, A, B, C)), return_last_state=True)),
        lambda x, dt, A, B, C: (lambda parts: (torch.cat([p[0] for p in parts], -1), parts[-1][1]))(
            [selective_scan(x[..., s:s + 4], dt[..., s:s + 4], A, B[..., s:s + 4], C[..., s:s + 4],
                            return_last_state=True, impl="naive") for s in range(0, x.shape[-1], 4)]),  # no carry
    ),
    "ch08.segsum": (
        lambda a: torch.exp(torch.cumsum(torch.tril(a[..., :, None].expand(*a.shape, a.shape[-1]), -1), -2)).tril(),
        lambda a: torch.exp(a.cumsum(-1)[..., :, None] - a.cumsum(-1)[..., None, :]).tril(),  # cs_t - cs_s: cancels
    ),
    "ch08.first_kernel_cb": (  # a Triton kernel: the interpreter on a CPU
        lambda *args: _ssd_rung1(*args),
        lambda x, dt, A, B, C, CB: _ssd_rung1(x, dt, A, B, C, CB.transpose(-1, -2)),  # C Bᵀ read transposed
    ),
    "ch09.trapezoid_weights": (
        lambda dt, A, lam: (torch.exp(dt * A), (1 - lam) * dt * torch.exp(dt * A), lam * dt),
        lambda dt, A, lam: (torch.exp(dt * A), (1 - lam) * dt, lam * dt),  # β not decayed by the step
    ),
    "ch10.carry_in": (
        lambda h0, dt, A, C: (lambda free: ((free * C[:, None]).sum(2), free[..., -1]))(
            torch.exp(dt.cumsum(-1)[:, :, None, :] * A[None, :, :, None]) * h0[..., None]),
        lambda h0, dt, A, C: (lambda free: ((free * C[:, None]).sum(2), free[..., -1]))(
            torch.exp((dt.cumsum(-1) - dt)[:, :, None, :] * A[None, :, :, None]) * h0[..., None]),  # decays before t only
    ),
    "ch10.kv_cache_bytes": (
        lambda n_layers, n_kv_heads, head_dim, context, batch, e: 2 * n_layers * n_kv_heads * head_dim * context * batch * e,
        lambda n_layers, n_kv_heads, head_dim, context, batch, e: n_layers * n_kv_heads * head_dim * context * batch * e,  # keys only
    ),
    "ch11.delta_step": (
        lambda S, q, k, v, beta, g: (lambda Sd: (lambda Sn: (Sn, torch.einsum("bhkv,bhk->bhv", Sn, q) / q.shape[-1] ** 0.5))(
            Sd + k[..., :, None] * (beta[..., None] * (v - torch.einsum("bhkv,bhk->bhv", Sd, k)))[..., None, :]))(
            torch.exp(g)[..., None, None] * S),
        lambda S, q, k, v, beta, g: (lambda Sn: (Sn, torch.einsum("bhkv,bhk->bhv", Sn, q) / q.shape[-1] ** 0.5))(
            torch.exp(g)[..., None, None] * S + beta[..., None, None] * k[..., :, None] * v[..., None, :]),  # no correction
    ),
    "ch11.ut_transform": (
        lambda K, beta: torch.linalg.inv(torch.eye(K.shape[-2], dtype=K.dtype) + torch.tril(beta[..., :, None] * (K @ K.mT), -1)),
        lambda K, beta: torch.linalg.inv(torch.eye(K.shape[-2], dtype=K.dtype) + torch.tril(K @ K.mT, -1)),  # β left out
    ),
}


def _ssd_rung1(x, dt, A, B, C, CB):
    """Rung 1 of chapter 8's ladder on the device, from the check's float64 CPU tensors."""
    import ssm_edu
    from ssm_edu.kernels.ssd_ladder import ssd_rung1

    dev = ssm_edu.default_device()
    return ssd_rung1(*(t.to(dev, torch.float32) for t in (x, dt, A, B, C, CB))).cpu()


def test_every_exercise_has_test_solutions():
    assert set(SOLUTIONS) == set(_REGISTRY)
    assert len(exercises()) == len(_REGISTRY)


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_check_passes_the_right_answer_and_fails_the_wrong_one(name, capsys):
    right, wrong = SOLUTIONS[name]
    assert check(name, right)
    assert "✓" in capsys.readouterr().out
    result = check(name, wrong)
    assert not result
    out = capsys.readouterr().out
    assert "✗" in out and "Hint:" in out and f"seed={result.seed}" in out


def test_report_names_case_and_error_but_not_the_solution(capsys):
    check("ch02.zoh", SOLUTIONS["ch02.zoh"][1], seed=3)
    out = capsys.readouterr().out
    assert "case 1 of" in out and "relative error" in out
    assert "expm1" not in out and "def " not in out and "lambda" not in out


def test_same_seed_replays_the_same_cases(capsys):
    a = check("ch01.impulse_response", SOLUTIONS["ch01.impulse_response"][1], seed=11)
    b = check("ch01.impulse_response", SOLUTIONS["ch01.impulse_response"][1], seed=11)
    assert a.report == b.report


def test_learner_exceptions_shapes_and_nans_are_reported(capsys):
    assert not check("ch02.zoh", lambda lam, B, dt: 1 / 0)
    assert "raised ZeroDivisionError" in capsys.readouterr().out
    assert not check("ch01.impulse_response", lambda A, B, C, t: torch.zeros(len(t), 1, dtype=A.dtype))
    assert "expected shape" in capsys.readouterr().out
    assert not check("ch01.impulse_response", lambda A, B, C, t: torch.full((len(t),), float("nan"), dtype=A.dtype))
    assert "NaN" in capsys.readouterr().out
    assert not check("ch02.zoh", lambda lam, B, dt: torch.exp(dt * lam))
    assert "expected a tuple of 2 results" in capsys.readouterr().out


def test_numpy_results_are_accepted():
    assert check("ch01.impulse_response", lambda A, B, C, t: impulse_response(A, B, C, t).numpy(), quiet=True)


def test_edge_cases_are_included():
    """Each exercise is exercised at size 1 (a single mode / time point / state)."""
    gen = torch.Generator().manual_seed(0)
    for name, ex in _REGISTRY.items():
        labels = " ".join(label for label, _ in ex.cases(gen))
        assert any(s in labels for s in ("N = 1", "single", "RC filter")), name


def test_unknown_exercise_and_non_callable():
    with pytest.raises(ValueError, match="unknown exercise 'ch99.x'; known: ch01"):
        check("ch99.x", print)
    with pytest.raises(TypeError, match="must be your function"):
        check("ch02.zoh", 3)


def test_check_works_in_a_plain_script(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "s.py"
    script.write_text("import torch\nfrom ssm_edu import check\nok = check('ch02.zoh', lambda l, b, dt: (torch.exp(dt*l), torch.expm1(dt*l)/l*b))\nraise SystemExit(0 if ok else 1)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "✓ ch02.zoh" in out.stdout


def test_reference_of_zoh_matches_public_api():
    lam, B = torch.tensor([-1.0 + 2j], dtype=torch.complex128), torch.tensor([1.0 + 0j], dtype=torch.complex128)
    Ab, Bb = discretize_diag(lam, B, 0.1, impl="naive")
    assert torch.allclose(Bb, torch.expm1(0.1 * lam) / lam * B)
