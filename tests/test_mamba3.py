"""mamba3 (chapter 9): every PyTorch impl against the float64 loop, SISO and MIMO; the
reductions (λ = 1, θ = 0 is Mamba-2 with a time-varying A; R = 1 is SISO); the
decoding step; the complex form; gradients; bad input. The Triton kernels are tested in
test_mamba3_triton.py."""

import math

import pytest
import torch

import ssm_edu
from ssm_edu import Mamba3State, mamba3, mamba3_step, rotate_pairs, ssd, trapezoid_weights
from ssm_edu.mamba3 import mamba3_complex_naive, mamba3_mask
from ssm_edu.numerics import rel_error, tolerance

DEVICE = ssm_edu.default_device()
ON_GPU = DEVICE.type == "cuda"
F64 = torch.float64


def inputs(gen, b=2, L=7, H=4, P=3, G=2, N=6, R=None, dtype=F64, extras=True, state=False):
    """Random Mamba-3 inputs in float64: Δ in [0.05, 0.25], A in [-2.2, -0.2], λ in [0, 1], θ ~ 2 N(0, 1).

    Returns (args, kwargs) for ``mamba3``; with ``state`` an initial
    ``Mamba3State`` with a non-zero previous k and x (so that the t = 0 β-term counts).
    """
    r = () if R is None else (R,)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    uni = lambda *s: torch.rand(*s, generator=gen, dtype=F64)  # noqa: E731
    x = rnd(b, L, H, *r, P)
    dt = 0.05 + 0.2 * uni(b, L, H)
    A = -(0.2 + 2 * uni(b, L, H))
    B, C = rnd(b, L, G, *r, N), rnd(b, L, G, *r, N)
    lam = uni(b, L, H)
    theta = 2 * rnd(b, L, H, N // 2)
    kwargs = {}
    if extras:
        kwargs.update(D=rnd(H), z=rnd(*x.shape))
    if state:
        kwargs["initial_state"] = Mamba3State(rnd(b, H, P, N), 2 * math.pi * uni(b, H, N // 2), rnd(b, H, *r, N), rnd(b, H, *r, P))
    cast = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) else t  # noqa: E731
    kwargs = {k: (Mamba3State(*map(cast, v)) if isinstance(v, Mamba3State) else cast(v)) for k, v in kwargs.items()}
    return tuple(cast(t) for t in (x, dt, A, B, C, lam, theta)), kwargs


def angle_error(a, b):
    """Largest distance between two angles on the circle (final angles are reduced mod 2π)."""
    d = torch.remainder(a.double().cpu() - b.double().cpu() + math.pi, 2 * math.pi) - math.pi
    return d.abs().max().item()


def assert_states_close(s, ref, tol, label=""):
    for name in ("h", "k", "x"):
        err = rel_error(getattr(s, name), getattr(ref, name))
        assert err < tol, f"{label} final {name}: rel error {err:.3g}"
    assert angle_error(s.angle, ref.angle) < 10 * tol, f"{label} final angle"
    assert float(s.angle.min()) >= 0 and float(s.angle.max()) < 2 * math.pi + 1e-6, f"{label} angle not reduced"


RANKS = [None, 2, 4]  # SISO, MIMO R = 2 and R = 4


# ---------------------------------------------------------------- the PyTorch tiers


@pytest.mark.parametrize("R", RANKS, ids=lambda r: "siso" if r is None else f"R{r}")
@pytest.mark.parametrize("L,chunk", [(1, 64), (7, 3), (37, 8), (20, 64)])
@pytest.mark.parametrize("state", [False, True])
def test_tiers_float64(R, L, chunk, state, gen):
    """quadratic and vectorized equal the loop in float64, with D, z, an initial state and the final state."""
    args, kw = inputs(gen, L=L, R=R, state=state, b=1 if L == 20 else 2)
    y0, s0 = mamba3(*args, **kw, return_final_state=True, impl="naive")
    assert y0.shape == args[0].shape and y0.dtype == F64
    for impl in ("quadratic", "vectorized"):
        y, s = mamba3(*args, **kw, chunk_size=chunk, return_final_state=True, impl=impl)
        assert rel_error(y, y0) < 1e-12, impl
        assert_states_close(s, s0, 1e-12, impl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("R", RANKS, ids=lambda r: "siso" if r is None else f"R{r}")
def test_tiers_low_precision(dtype, R, gen):
    """Each impl in float32 / bfloat16 is within tolerance of the float64 loop on the same rounded inputs."""
    args, kw = inputs(gen, L=37, R=R, dtype=dtype, state=True)
    up = lambda t: t.double() if isinstance(t, torch.Tensor) else t  # noqa: E731
    up_kw = {k: (Mamba3State(*map(up, v)) if isinstance(v, Mamba3State) else up(v)) for k, v in kw.items()}
    y_ref, s_ref = mamba3(*map(up, args), **up_kw, return_final_state=True, impl="naive")
    for impl in ("naive", "quadratic", "vectorized"):
        y, s = mamba3(*args, **kw, chunk_size=16, return_final_state=True, impl=impl)
        assert y.dtype == dtype and s.h.dtype == torch.float32, impl
        err = rel_error(y, y_ref)
        assert err < tolerance(dtype), f"{impl} {dtype}: rel error {err:.3g}"
        assert rel_error(s.h, s_ref.h) < tolerance(dtype), impl


def test_result_does_not_depend_on_chunk_size(gen):
    args, kw = inputs(gen, L=50, R=2, state=True)
    ref = mamba3(*args, **kw, impl="naive")
    for Q in (1, 2, 7, 16, 49, 50, 64, 200):
        assert rel_error(mamba3(*args, **kw, chunk_size=Q, impl="vectorized"), ref) < 1e-12, Q


def test_two_halves_with_the_state_equal_the_whole(gen):
    """The final state (h, angle, k, x) carries everything: splitting the sequence changes nothing."""
    for R in (None, 2):
        args, kw = inputs(gen, L=30, R=R, state=True)
        y_all, s_all = mamba3(*args, **kw, return_final_state=True, impl="naive")
        part = lambda sl: ([t[:, sl] for t in args], dict(D=kw["D"], z=kw["z"][:, sl]))  # noqa: E731
        for impl in ("naive", "quadratic", "vectorized"):
            a1, k1 = part(slice(0, 11))
            y1, s1 = mamba3(*a1, **k1, initial_state=kw["initial_state"], return_final_state=True, impl=impl, chunk_size=4)
            a2, k2 = part(slice(11, None))
            y2, s2 = mamba3(*a2, **k2, initial_state=s1, return_final_state=True, impl=impl, chunk_size=4)
            assert rel_error(torch.cat([y1, y2], dim=1), y_all) < 1e-12, impl
            assert_states_close(s2, s_all, 1e-12, impl)


def test_the_previous_k_and_x_matter(gen):
    """An initial state's k and x enter through step 0's β-term: dropping them changes y_0 unless λ_0 = 1."""
    args, kw = inputs(gen, L=5, state=True)
    st = kw["initial_state"]
    no_history = dict(D=kw["D"], z=kw["z"], initial_state=st._replace(k=torch.zeros_like(st.k), x=torch.zeros_like(st.x)))
    assert rel_error(mamba3(*args, **no_history, impl="naive"), mamba3(*args, **kw, impl="naive")) > 1e-3
    lam = args[5].clone()
    lam[:, 0] = 1.0  # β_0 = 0: the previous k, x no longer reach the output
    args = (*args[:5], lam, args[6])
    assert rel_error(mamba3(*args, **no_history, impl="naive"), mamba3(*args, **kw, impl="naive")) < 1e-14


# ---------------------------------------------------------------- reductions


def ssd_time_varying_loop(x, dt, A, B, C, D, h0):
    """Mamba-2 with a per-token A, written out with plain tensors: h = exp(Δ A_t) h + Δ x Bᵀ, y = h C + D x."""
    b, L, H, P = x.shape
    Bh = B.repeat_interleave(H // B.shape[2], dim=2)
    Ch = C.repeat_interleave(H // C.shape[2], dim=2)
    h, ys = h0.clone(), []
    for t in range(L):
        for i in range(b):
            for j in range(H):
                h[i, j] = math.exp(dt[i, t, j] * A[i, t, j]) * h[i, j] + dt[i, t, j] * torch.outer(x[i, t, j], Bh[i, t, j])
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]) + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1), h


def test_lambda_one_theta_zero_is_mamba2_with_time_varying_A(gen):
    args, kw = inputs(gen, L=23, extras=False)
    x, dt, A, B, C, lam, theta = args
    D = torch.randn(4, generator=gen, dtype=F64)
    h0 = torch.randn(2, 4, 3, 6, generator=gen, dtype=F64)
    ref, h_ref = ssd_time_varying_loop(x, dt, A, B, C, D, h0)
    one, zero = torch.ones_like(lam), torch.zeros_like(theta)
    for impl in ("naive", "quadratic", "vectorized"):
        y, s = mamba3(x, dt, A, B, C, one, zero, D=D, initial_state=h0, chunk_size=5, return_final_state=True, impl=impl)
        assert rel_error(y, ref) < 1e-12 and rel_error(s.h, h_ref) < 1e-12, impl
    # and the trapezoid (λ < 1) or the rotation (θ ≠ 0) really change the result
    assert rel_error(mamba3(x, dt, A, B, C, lam, zero, D=D, initial_state=h0, impl="naive"), ref) > 1e-2
    assert rel_error(mamba3(x, dt, A, B, C, one, theta, D=D, initial_state=h0, impl="naive"), ref) > 1e-2


def test_lambda_one_theta_zero_constant_A_equals_ssd(gen):
    """With one A per head, mamba3(λ = 1, θ = 0) is chapter 8's ssd, outputs and final states."""
    args, kw = inputs(gen, L=29)
    x, dt, _, B, C, lam, theta = args
    A_h = -(0.2 + 2 * torch.rand(4, generator=gen, dtype=F64))
    A = A_h.expand_as(dt).contiguous()
    h0 = torch.randn(2, 4, 3, 6, generator=gen, dtype=F64)
    ref, h_ref = ssd(x, dt, A_h, B, C, chunk_size=8, D=kw["D"], z=kw["z"], initial_states=h0,
                     return_final_states=True, impl="naive")
    for impl in ("naive", "quadratic", "vectorized"):
        y, s = mamba3(x, dt, A, B, C, torch.ones_like(lam), torch.zeros_like(theta), D=kw["D"], z=kw["z"],
                      initial_state=h0, chunk_size=8, return_final_state=True, impl=impl)
        assert rel_error(y, ref) < 1e-12 and rel_error(s.h, h_ref) < 1e-12, impl


def test_rank_one_mimo_equals_siso(gen):
    args, kw = inputs(gen, L=19, state=True)
    x, dt, A, B, C, lam, theta = args
    st = kw["initial_state"]
    mimo_state = Mamba3State(st.h, st.angle, st.k[:, :, None], st.x[:, :, None])
    for impl in ("naive", "quadratic", "vectorized"):
        y, s = mamba3(*args, **kw, return_final_state=True, impl=impl, chunk_size=4)
        y1, s1 = mamba3(x[:, :, :, None], dt, A, B[:, :, :, None], C[:, :, :, None], lam, theta, D=kw["D"],
                        z=kw["z"][:, :, :, None], initial_state=mimo_state, return_final_state=True, impl=impl, chunk_size=4)
        assert y1.shape == (*x.shape[:3], 1, x.shape[3])
        assert rel_error(y1[:, :, :, 0], y) < 1e-13, impl
        assert rel_error(s1.h, s.h) < 1e-13 and rel_error(s1.k[:, :, 0], s.k) < 1e-13, impl


def test_mimo_ranks_share_one_state(gen):
    """Rank R sums R outer products into one P x N state: R copies of a SISO input, each scaled by 1/R,
    give the SISO state, and every rank reads the SISO output."""
    args, kw = inputs(gen, L=11, extras=False)
    x, dt, A, B, C, lam, theta = args
    R = 4
    ys, s = mamba3(*args, return_final_state=True, impl="naive")
    xm = (x / R)[:, :, :, None].expand(-1, -1, -1, R, -1)
    ym, sm = mamba3(xm, dt, A, B[:, :, :, None].expand(-1, -1, -1, R, -1), C[:, :, :, None].expand(-1, -1, -1, R, -1),
                    lam, theta, return_final_state=True, impl="vectorized", chunk_size=4)
    assert rel_error(sm.h, s.h) < 1e-13
    assert all(rel_error(ym[:, :, :, r], ys) < 1e-13 for r in range(R))


# ---------------------------------------------------------------- step, complex form, helpers


@pytest.mark.parametrize("R", RANKS, ids=lambda r: "siso" if r is None else f"R{r}")
def test_step_reproduces_the_scan(R, gen):
    """mamba3_step, token by token from a cache, gives the scan's outputs and final state."""
    args, kw = inputs(gen, L=13, R=R, state=True)
    y_ref, s_ref = mamba3(*args, **kw, chunk_size=4, return_final_state=True, impl="vectorized")
    state, ys = kw["initial_state"], []
    for t in range(args[0].shape[1]):
        y, state = mamba3_step(state, *(a[:, t] for a in args), D=kw["D"], z=kw["z"][:, t])
        ys.append(y)
    assert rel_error(torch.stack(ys, dim=1), y_ref) < 1e-12
    assert_states_close(state, s_ref, 1e-12)


def test_step_from_an_empty_cache(gen):
    """The all-zero cache and no cache are the start of a sequence; the cache is float32 for bfloat16 input."""
    args, kw = inputs(gen, L=6, R=2, extras=False, dtype=torch.bfloat16)
    b, _, H, R, P = args[0].shape
    first = [a[:, 0] for a in args]
    y_none, s_none = mamba3_step(None, *first)
    y_zero, s_zero = mamba3_step(Mamba3State.zeros(b, H, P, 6, R=R), *first)
    assert torch.equal(y_none, y_zero) and y_none.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in s_none)
    ref = mamba3(*args, impl="naive")[:, 0]
    assert torch.equal(y_none, ref)


@pytest.mark.parametrize("R", [None, 3])
def test_complex_state_equals_rotations(R, gen):
    """A complex diagonal state with decay exp(Δ(A - iθ)) is the rotated real state (the 'RoPE trick')."""
    args, kw = inputs(gen, L=31, R=R)
    ref = mamba3(*args, **kw, impl="naive")
    assert rel_error(mamba3_complex_naive(*args, **kw), ref) < 1e-12
    # the sign of the phase matters: exp(Δ(A + iθ)) is a different model
    x, dt, A, B, C, lam, theta = args
    assert rel_error(mamba3_complex_naive(x, dt, A, B, C, lam, -theta, **kw), ref) > 1e-2


def test_trapezoid_weights(gen):
    dt = 0.01 + torch.rand(3, 5, 2, generator=gen, dtype=F64)
    A = -torch.rand(3, 5, 2, generator=gen, dtype=F64)
    alpha, beta, gamma = trapezoid_weights(dt, A, torch.ones_like(dt))  # exponential Euler
    assert torch.equal(beta, torch.zeros_like(beta)) and torch.equal(gamma, dt)
    lam = torch.rand(3, 5, 2, generator=gen, dtype=F64)
    alpha, beta, gamma = trapezoid_weights(dt, A, lam)
    assert rel_error(alpha, torch.exp(dt * A)) < 1e-15
    assert rel_error(beta / alpha + gamma, dt) < 1e-14  # the two ends share Δ between them


def test_rotate_pairs(gen):
    v = torch.randn(4, 10, generator=gen, dtype=F64)
    a, b = torch.randn(4, 5, generator=gen, dtype=F64), torch.randn(4, 5, generator=gen, dtype=F64)
    # a complex multiplication by e^{i angle}
    vc = torch.complex(v[:, 0::2], v[:, 1::2]) * torch.exp(1j * a)
    assert rel_error(rotate_pairs(v, a), torch.stack([vc.real, vc.imag], -1).flatten(-2)) < 1e-14
    # lengths are kept, and Rot(a)ᵀ Rot(b) = Rot(b - a)
    assert rel_error(rotate_pairs(v, a).norm(dim=-1), v.norm(dim=-1)) < 1e-14
    w = torch.randn(4, 10, generator=gen, dtype=F64)
    lhs = (rotate_pairs(v, a) * rotate_pairs(w, b)).sum(-1)
    assert rel_error(lhs, (v * rotate_pairs(w, b - a)).sum(-1)) < 1e-13
    # angle 0 changes nothing, π/2 sends (1, 0) to (0, 1)
    assert torch.equal(rotate_pairs(v, torch.zeros(5, dtype=F64)), v)
    e = rotate_pairs(torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([math.pi / 2], dtype=F64))
    assert torch.allclose(e, torch.tensor([0.0, 1.0], dtype=F64), atol=1e-15)


def test_mask_entries(gen):
    """M[t, s] written out from the specification's sums, entry by entry."""
    args, _ = inputs(gen, b=1, L=6, H=1, extras=False)
    dt, A, lam = args[1][0, :, 0], args[2][0, :, 0], args[5][0, :, 0]
    M = mamba3_mask(args[1], args[2], args[5])[0, 0]
    for t in range(6):
        for s in range(6):
            if s > t:
                expected = 0.0
            else:
                decay = math.exp(sum(dt[r] * A[r] for r in range(s + 1, t + 1)))
                w = lam[t] * dt[t] if s == t else lam[s] * dt[s] + (1 - lam[s + 1]) * dt[s + 1]
                expected = decay * w
            assert abs(M[t, s].item() - float(expected)) < 1e-15, (t, s)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("impl", ["naive", "vectorized"])
def test_gradcheck(impl, gen):
    args, kw = inputs(gen, b=1, L=5, H=2, P=2, G=1, N=4, R=2, state=True)
    leaves = [t.clone().requires_grad_() for t in (*args, kw["D"], kw["z"], *kw["initial_state"])]

    def f(*t):
        y, s = mamba3(*t[:7], D=t[7], z=t[8], initial_state=Mamba3State(*t[9:]), chunk_size=2,
                      return_final_state=True, impl=impl)
        return y, s.h, s.k

    assert torch.autograd.gradcheck(f, leaves)


# ---------------------------------------------------------------- bad input


def _good(R=None):
    args, kw = inputs(torch.Generator().manual_seed(0), b=2, L=5, H=4, P=3, G=2, N=6, R=R, extras=False)
    return list(args)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: a.__setitem__(0, torch.zeros(2, 5, 4)), r"x must have shape \(batch, L, H, P\) or \(batch, L, H, R, P\); got \(2, 5, 4\)"),
        (lambda a: a.__setitem__(1, torch.zeros(2, 6, 4)), r"dt must have shape \(batch, L, H\) = \(2, 5, 4\); got \(2, 6, 4\)"),
        (lambda a: a.__setitem__(2, torch.zeros(4)), r"A must have shape \(batch, L, H\) = \(2, 5, 4\); got \(4,\)"),
        (lambda a: a.__setitem__(3, torch.zeros(2, 5, 2, 2, 6)), r"B must have shape \(batch, L, G, N\)"),
        (lambda a: a.__setitem__(4, torch.zeros(2, 5, 2, 7)), r"C must have shape \(batch, L, G, N\) = \(2, 5, 2, 6\); got \(2, 5, 2, 7\)"),
        (lambda a: a.__setitem__(6, torch.zeros(2, 5, 4, 6)), r"theta must have shape \(batch, L, H, N/2\) = \(2, 5, 4, 3\); got \(2, 5, 4, 6\)"),
        (lambda a: (a.__setitem__(3, torch.zeros(2, 5, 2, 5)), a.__setitem__(4, torch.zeros(2, 5, 2, 5))), r"N must be even"),
        (lambda a: (a.__setitem__(3, torch.zeros(2, 5, 3, 6)), a.__setitem__(4, torch.zeros(2, 5, 3, 6))), r"H = 4 must be a multiple"),
        (lambda a: a.__setitem__(5, torch.zeros(2, 5, 4, dtype=torch.int64)), r"lam has dtype int64"),
        (lambda a: a.__setitem__(1, torch.zeros(2, 5, 4, device="meta")), r"one device"),
    ],
)
def test_bad_input(change, match):
    a = _good()
    change(a)
    with pytest.raises(ValueError, match=match):
        mamba3(*a)


def test_bad_empty_sequence():
    a = _good()
    a = [t[:, :0] for t in a]
    with pytest.raises(ValueError, match=r"L must be >= 1; got L = 0"):
        mamba3(*a)


def test_bad_options_and_state():
    a = _good()
    with pytest.raises(ValueError, match=r"chunk_size must be an int >= 1; got 0"):
        mamba3(*a, chunk_size=0)
    with pytest.raises(ValueError, match=r"unknown impl='loop'; valid: 'auto', 'naive', 'quadratic', 'vectorized', 'triton'"):
        mamba3(*a, impl="loop")
    with pytest.raises(ValueError, match=r"D must have shape \(H,\) = \(4,\) or \(H, P\) = \(4, 3\); got \(3,\)"):
        mamba3(*a, D=torch.zeros(3))
    with pytest.raises(ValueError, match=r"z must have shape \(batch, L, H, P\) = \(2, 5, 4, 3\); got \(2, 5, 4, 2, 3\)"):
        mamba3(*a, z=torch.zeros(2, 5, 4, 2, 3))
    with pytest.raises(ValueError, match=r"initial_state must have shape \(batch, H, P, N\) = \(2, 4, 3, 6\); got \(2, 4, 6, 3\)"):
        mamba3(*a, initial_state=torch.zeros(2, 4, 6, 3))
    with pytest.raises(ValueError, match=r"initial_state must be None, a tensor h .* or a Mamba3State .* got tuple of length 2"):
        mamba3(*a, initial_state=(torch.zeros(2, 4, 3, 6), torch.zeros(2, 4, 3)))
    good = Mamba3State.zeros(2, 4, 3, 6, dtype=F64)
    with pytest.raises(ValueError, match=r"initial_state.angle must have shape \(batch, H, N/2\) = \(2, 4, 3\); got \(2, 4, 6\)"):
        mamba3(*a, initial_state=good._replace(angle=torch.zeros(2, 4, 6, dtype=F64)))
    with pytest.raises(ValueError, match=r"initial_state.k must have shape \(batch, H, N\) = \(2, 4, 6\); got \(2, 4, 2, 6\)"):
        mamba3(*a, initial_state=good._replace(k=torch.zeros(2, 4, 2, 6, dtype=F64)))
    m = _good(R=2)
    with pytest.raises(ValueError, match=r"initial_state.x must have shape \(batch, H, R, P\) = \(2, 4, 2, 3\); got \(2, 4, 3\)"):
        mamba3(*m, initial_state=Mamba3State.zeros(2, 4, 3, 6, R=2, dtype=F64)._replace(x=torch.zeros(2, 4, 3, dtype=F64)))


def test_bad_step_input():
    a = [t[:, 0] for t in _good()]
    with pytest.raises(ValueError, match=r"mamba3_step: dt must have shape \(batch, H\) = \(2, 4\); got \(2, 1, 4\)"):
        mamba3_step(None, a[0], a[1][:, None], *a[2:])
    with pytest.raises(ValueError, match=r"mamba3_step: state.h must have shape \(batch, H, P, N\) = \(2, 4, 3, 6\)"):
        mamba3_step(Mamba3State.zeros(2, 4, 3, 8), *a)
