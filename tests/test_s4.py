"""cauchy, nplr_legs, s4_kernel and the S4 layer (chapter 5): tiers, the Triton kernel
(interpreter on CPU, compiled on a GPU), the matrix-power oracle, gradients, bad input."""

import pytest
import torch

import ssm_edu
from ssm_edu import discretize, hippo, ssm_kernel
from ssm_edu.numerics import rel_error, tolerance
from ssm_edu.s4 import (DPLR_INITS, S4Classifier, S4Layer, cauchy, dplr_dense, dplr_init, nplr_legs, s4_ctilde,
                        s4_generating_kernel, s4_kernel)
from tiers import assert_tiers_agree

DEVICE = ssm_edu.default_device()
ON_GPU = DEVICE.type == "cuda"
C128 = torch.complex128


def crandn(*shape, gen):
    return torch.randn(*shape, generator=gen, dtype=C128)


def legs_system(H, N, gen, dt=None):
    """H channels of HiPPO-LegS in DPLR form, random C ~ CN(0, 1), Δ spread over [1e-3, 1e-1]."""
    Lambda, P, B, _ = nplr_legs(N)
    rep = lambda x: x.expand(H, N).clone()  # noqa: E731
    dt = torch.logspace(-3, -1, H, dtype=torch.float64) if dt is None else dt
    return rep(Lambda), rep(P), rep(B), crandn(H, N, gen=gen), dt


def random_dplr(H, N, gen):
    """A random stable DPLR system (Re Λ < 0, small P) that is not LegS."""
    Lambda = -torch.rand(H, N, generator=gen, dtype=torch.float64) - 0.1 + 1j * 3 * torch.randn(H, N, generator=gen, dtype=torch.float64)
    return Lambda, 0.3 * crandn(H, N, gen=gen), crandn(H, N, gen=gen), crandn(H, N, gen=gen), 0.05 + 0.1 * torch.rand(H, generator=gen, dtype=torch.float64)


def dense_kernel(Lambda, P, B, C, dt, L):
    """The oracle: dense bilinear Ā, B̄ and chapter 3's ssm_kernel (repeated squaring)."""
    Ab, Bb = discretize(dplr_dense(Lambda, P), B, dt, method="bilinear")
    return ssm_kernel(Ab, Bb, C, L).real


# ---------------------------------------------------------------- cauchy

CAUCHY_CASES = [((), 1, 1), ((), 5, 7), ((3,), 16, 33), ((2, 3), 7, 64), ((1,), 33, 1), ((4, 1), 1, 50)]


@pytest.mark.parametrize("batch,N,L", CAUCHY_CASES)
def test_cauchy_tiers(batch, N, L):
    def make(dtype, gen):
        return (crandn(*batch, N, gen=gen), 2 * crandn(L, gen=gen), crandn(*batch, N, gen=gen)), {}

    assert_tiers_agree(cauchy, make, ["vectorized"], dtypes=(torch.float32,), label=f"{batch} N{N} L{L}")


def test_cauchy_matches_the_matrix_product():
    """Oracle: out = v Cᵀ with the Cauchy matrix C[l, n] = 1/(z_l - w_n)."""
    gen = torch.Generator().manual_seed(1)
    v, z, w = crandn(6, gen=gen), crandn(9, gen=gen), crandn(6, gen=gen)
    M = 1 / (z[:, None] - w[None, :])  # (L, N)
    assert rel_error(cauchy(v, z, w, impl="naive"), M @ v) < 1e-14


# Interpreter sizes stay at a few thousand elements; on a GPU add large and odd sizes.
TRITON_CASES = [((), 1, 1), ((), 5, 7), ((3,), 16, 33), ((2, 3), 33, 65), ((1,), 40, 100), ((4, 2), 3, 129)]
if ON_GPU:
    TRITON_CASES += [((4, 64), 64, 4096), ((4, 3), 257, 1001), ((1,), 1000, 8193)]


@pytest.mark.parametrize("batch,N,L", TRITON_CASES)
def test_cauchy_triton(batch, N, L):
    """complex64 inputs against the naive version in complex128 on the same (rounded) inputs."""
    gen = torch.Generator().manual_seed(2)
    v, z, w = (x.to(torch.complex64) for x in (crandn(*batch, N, gen=gen), 2 * crandn(L, gen=gen), crandn(*batch, N, gen=gen)))
    ref = cauchy(v.to(C128), z.to(C128), w.to(C128), impl="naive")
    out = cauchy(v.to(DEVICE), z.to(DEVICE), w.to(DEVICE), impl="triton")
    assert out.dtype == torch.complex64 and out.shape == (*batch, L)
    assert rel_error(out, ref) < tolerance(torch.complex64)


def test_cauchy_triton_survives_huge_points():
    """S4 evaluates at z ~ 1e19 (ω = -1, small Δ): |z - w|² overflows float32 unless scaled."""
    gen = torch.Generator().manual_seed(3)
    v, w = crandn(2, 8, gen=gen).to(torch.complex64), crandn(2, 8, gen=gen).to(torch.complex64)
    z = torch.tensor([1.0, 3e19j, -2e20 + 1e19j], dtype=torch.complex64)
    ref = cauchy(v.to(C128), z.to(C128), w.to(C128), impl="naive")
    out = cauchy(v.to(DEVICE), z.to(DEVICE), w.to(DEVICE), impl="triton")
    assert torch.all(torch.isfinite(torch.view_as_real(out)))
    assert torch.all((out.cpu() - ref).abs() <= 1e-5 * ref.abs())  # every point, not just the large ones


def test_cauchy_triton_takes_conjugate_views():
    """x.conj() is a lazy view (a conjugate bit, no copy); the launcher's float32 view must see the conjugate."""
    gen = torch.Generator().manual_seed(13)
    v, w = (crandn(3, 6, gen=gen).to(torch.complex64).to(DEVICE) for _ in range(2))
    z = crandn(9, gen=gen).to(torch.complex64).to(DEVICE)
    ref = cauchy(*(x.conj().cpu().to(C128) for x in (v, z, w)), impl="naive")
    assert rel_error(cauchy(v.conj(), z.conj(), w.conj(), impl="triton"), ref) < tolerance(torch.complex64)


def test_cauchy_triton_rejects_complex128_and_auto_avoids_it():
    v = torch.ones(3, dtype=C128, device=DEVICE)
    with pytest.raises(ValueError, match="use impl='vectorized' for complex128"):
        cauchy(v, v, 2 * v, impl="triton")
    assert cauchy(v, v, 2 * v).dtype == C128


def test_cauchy_triton_gradients_match_vectorized():
    gen = torch.Generator().manual_seed(4)
    args = [x.to(torch.complex64).to(DEVICE).requires_grad_() for x in (crandn(2, 5, gen=gen), 2 * crandn(9, gen=gen), crandn(2, 5, gen=gen))]
    g = crandn(2, 9, gen=gen).to(torch.complex64).to(DEVICE)  # a random loss direction
    grads = {}
    for impl in ("vectorized", "triton"):
        (cauchy(*args, impl=impl) * g.conj()).real.sum().backward()
        grads[impl] = [a.grad.clone() for a in args]
        for a in args:
            a.grad = None
    for a, b in zip(grads["triton"], grads["vectorized"]):
        assert rel_error(a, b) < 1e-5


@pytest.mark.parametrize("impl", ["naive", "vectorized"])
def test_cauchy_gradcheck(impl):
    gen = torch.Generator().manual_seed(5)
    args = [crandn(2, 4, gen=gen).requires_grad_(), 2 * crandn(5, gen=gen).requires_grad_(), crandn(2, 4, gen=gen).requires_grad_()]
    assert torch.autograd.gradcheck(lambda v, z, w: cauchy(v, z, w, impl=impl), args)


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.zeros(3, 4), torch.zeros(5), torch.zeros(3, 5)), r"w must have shape \(\.\.\., N\) = \(3, 4\); got \(3, 5\)"),
        ((torch.zeros(3, 4), torch.zeros(5, 1), torch.zeros(3, 4)), r"z must have shape \(L,\); got \(5, 1\)"),
        ((torch.zeros(3, 4), torch.zeros(5), torch.zeros(2, 4)), r"w must have shape \(\.\.\., N\)"),
        ((torch.zeros(()), torch.zeros(5), torch.zeros(())), r"v must have shape \(\.\.\., N\); got \(\)"),
        ((torch.zeros(4, dtype=torch.int64), torch.zeros(5), torch.zeros(4)), r"v has dtype int64"),
        ((torch.zeros(4), torch.zeros(5, device="meta"), torch.zeros(4)), r"one device"),
    ],
)
def test_cauchy_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        cauchy(*args)


def test_cauchy_bad_impl():
    with pytest.raises(ValueError, match=r"unknown impl='keops'; valid: 'auto', 'naive', 'vectorized', 'triton'"):
        cauchy(torch.ones(2), torch.ones(2), torch.zeros(2), impl="keops")


# ---------------------------------------------------------------- nplr_legs


@pytest.mark.parametrize("N", [1, 2, 7, 32])
def test_nplr_legs_reconstructs_hippo(N):
    A, B = hippo(N, "legs")
    Lambda, P, Bt, V = nplr_legs(N)
    assert rel_error(V.conj().T @ V, torch.eye(N, dtype=C128)) < 1e-13  # unitary
    assert rel_error(V @ dplr_dense(Lambda, P) @ V.conj().T, A.to(C128)) < 1e-12
    assert rel_error(V @ Bt, B.to(C128)) < 1e-12
    assert torch.allclose(Lambda.real, torch.full((N,), -0.5, dtype=torch.float64))
    p = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)  # P_n = √(n + ½)
    S = A + torch.outer(p, p)
    assert torch.allclose(S + S.T, -torch.eye(N, dtype=torch.float64), atol=1e-12)  # -½I + skew


def test_nplr_legs_bad_input():
    with pytest.raises(ValueError, match="nplr_legs: N must be an int >= 1; got 0"):
        nplr_legs(0)


# ---------------------------------------------------------------- s4_kernel

S4_CASES = [(1, 1, 1), (1, 1, 8), (2, 4, 1), (2, 8, 33), (3, 16, 64), (1, 5, 100)]


@pytest.mark.parametrize("H,N,L", S4_CASES)
@pytest.mark.parametrize("system", ["legs", "random"])
def test_s4_kernel_tiers(H, N, L, system):
    def make(dtype, gen):
        return ((legs_system(H, N, gen) if system == "legs" else random_dplr(H, N, gen)) + (L,)), {}

    assert_tiers_agree(s4_kernel, make, ["vectorized"], dtypes=(torch.float32,), label=f"{system} H{H} N{N} L{L}")


@pytest.mark.parametrize("H,N,L", [(1, 1, 1), (2, 4, 16), (3, 16, 64), (1, 8, 101)])
def test_s4_kernel_equals_the_matrix_power_kernel(H, N, L):
    """The oracle of ssm-spec §3: the same dense system through chapter 3's ssm_kernel."""
    gen = torch.Generator().manual_seed(6)
    for system in (legs_system(H, N, gen), random_dplr(H, N, gen)):
        K = s4_kernel(*system, L)
        assert K.dtype == torch.float64 and K.shape == (H, L)
        assert rel_error(K, dense_kernel(*system, L)) < 1e-12


def test_s4_kernel_without_low_rank_is_the_diagonal_kernel():
    """P = 0: K_l = Re Σ_n C_n B̄_n Λ̄_n^l with the bilinear Λ̄, B̄ of a diagonal system."""
    gen = torch.Generator().manual_seed(7)
    Lambda, _, B, C, dt = random_dplr(2, 6, gen)
    L = 40
    Lb = (1 + dt[:, None] * Lambda / 2) / (1 - dt[:, None] * Lambda / 2)  # (H, N)
    Bb = dt[:, None] * B / (1 - dt[:, None] * Lambda / 2)
    ref = (C[..., None] * Bb[..., None] * Lb[..., None] ** torch.arange(L)).sum(1).real
    assert rel_error(s4_kernel(Lambda, torch.zeros_like(Lambda), B, C, dt, L), ref) < 1e-12


@pytest.mark.parametrize("H,N,L", [(1, 1, 1), (2, 8, 33), (2, 16, 64), (1, 4, 128)])
def test_s4_kernel_triton(H, N, L):
    gen = torch.Generator().manual_seed(8)
    system = legs_system(H, N, gen)
    low = [x.to(torch.complex64) for x in system[:4]] + [system[4].float()]
    ref = s4_kernel(*[x.to(C128) for x in low[:4]], low[4].double(), L, impl="naive")
    out = s4_kernel(*[x.to(DEVICE) for x in low], L, impl="triton")
    assert out.dtype == torch.float32 and out.shape == (H, L)
    assert rel_error(out, ref) < tolerance(torch.float32)


def test_s4_kernel_float32_at_small_dt_and_even_length():
    """Δ = 1e-3 and even L put an evaluation point at ω = -1, z ~ 1e16: still accurate."""
    gen = torch.Generator().manual_seed(9)
    system = legs_system(2, 32, gen, dt=torch.tensor([1e-3, 1e-3], dtype=torch.float64))
    ref = s4_kernel(*system, 256, impl="naive")
    low = [x.to(torch.complex64).to(DEVICE) for x in system[:4]] + [system[4].float().to(DEVICE)]
    for impl in ("vectorized", "triton"):  # on the device: compiled Triton takes CUDA tensors only
        K = s4_kernel(*low, 256, impl=impl)
        assert K.device.type == DEVICE.type and rel_error(K.cpu(), ref) < 1e-4, impl


@pytest.mark.parametrize("impl", ["naive", "vectorized"])
def test_s4_kernel_gradcheck(impl):
    gen = torch.Generator().manual_seed(10)
    Lambda, P, B, C, dt = random_dplr(1, 3, gen)
    args = [x.clone().requires_grad_() for x in (Lambda, P, B, C, dt)]
    assert torch.autograd.gradcheck(lambda *a: s4_kernel(*a, 9, impl=impl), args)


def test_s4_kernel_triton_is_differentiable():
    gen = torch.Generator().manual_seed(11)
    Lambda, P, B, C, dt = random_dplr(2, 4, gen)
    grads = {}
    for impl in ("vectorized", "triton"):  # leaves on the device (compiled Triton: CUDA tensors only)
        args = [x.to(torch.complex64).to(DEVICE).requires_grad_() for x in (Lambda, P, B, C)]
        (s4_kernel(*args, dt.float().to(DEVICE), 16, impl=impl) ** 2).sum().backward()
        grads[impl] = [a.grad.cpu() for a in args]
    for a, b in zip(grads["triton"], grads["vectorized"]):
        assert torch.isfinite(a).all() and rel_error(a, b) < 1e-4


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(P=torch.zeros(2, 5, dtype=C128)), r"P must have shape \(H, N\) = \(2, 4\); got \(2, 5\)"),
        (dict(C=torch.zeros(4, dtype=C128)), r"C must have shape \(H, N\) = \(2, 4\); got \(4,\)"),
        (dict(Lambda=torch.zeros(2, 4, dtype=torch.int32)), r"Lambda has dtype int32"),
        (dict(dt=torch.ones(3, dtype=torch.float64)), r"dt must be a float, a 0-dim tensor or have the batch shape \(2,\)"),
        (dict(dt=-0.1), r"dt must be real, finite and > 0"),
        (dict(L=0), r"L must be an int >= 1; got 0"),
        (dict(B=torch.zeros(2, 4, dtype=C128, device="meta")), r"one device"),
    ],
)
def test_s4_kernel_bad_input(change, match):
    args = dict(Lambda=-torch.ones(2, 4, dtype=C128), P=torch.zeros(2, 4, dtype=C128), B=torch.ones(2, 4, dtype=C128),
                C=torch.ones(2, 4, dtype=C128), dt=0.1, L=8) | change
    with pytest.raises(ValueError, match=match):
        s4_kernel(**args)


# ---------------------------------------------------------------- the layer


def test_layer_ctilde_parametrisation_gives_the_kernel_of_c():
    """The layer stores C̃ = C (I - Ā^L); the generating function from C̃ is the kernel of C."""
    gen = torch.Generator().manual_seed(12)
    Lambda, P, B, C, dt = legs_system(2, 8, gen)
    Ct = s4_ctilde(Lambda, P, C, dt, 50)
    assert rel_error(s4_generating_kernel(Lambda, P, B, Ct, dt, 50), dense_kernel(Lambda, P, B, C, dt, 50)) < 1e-12


@pytest.mark.parametrize("L", [1, 17])
def test_recurrent_mode_equals_convolution_mode(L):
    """On the device: on a GPU the convolution goes through the Triton Cauchy kernel and the
    recurrence (complex128) runs on the GPU too."""
    torch.manual_seed(0)
    model = S4Classifier(1, 10, H=4, N=8, L_max=L, depth=2).to(DEVICE).eval()
    x = torch.randn(3, L, 1).to(DEVICE)
    with torch.no_grad():
        conv = model.features(x)
    rec, logits = model.stream(x)
    assert rel_error(rec, conv) < 1e-5
    assert rel_error(logits[:, -1], model(x).detach()) < 1e-5


def test_layer_shapes_and_gradients():
    torch.manual_seed(0)
    layer = S4Layer(H=3, N=4, L_max=20)
    u = torch.randn(2, 3, 20)
    y = layer(u)
    assert y.shape == (2, 3, 20)
    y.sum().backward()
    for name in ("log_dt", "Lambda", "P", "B", "Ct", "D"):
        assert getattr(layer, name).grad is not None and torch.isfinite(getattr(layer, name).grad).all(), name


# ---------------------------------------------------------------- the layer's kernel paths and initialisations


@pytest.mark.parametrize("H,N,L", [(1, 1, 1), (2, 5, 33), (3, 16, 64)])
def test_generating_kernel_cauchy_paths_agree(H, N, L):
    """The shared Cauchy matrix ("vectorized"), four separate products ("naive") and the
    Triton kernel ("triton", complex64; interpreter on CPU) give the same kernel."""
    gen = torch.Generator().manual_seed(21)
    Lambda, P, B, C, dt = random_dplr(H, N, gen)
    Ct = s4_ctilde(Lambda, P, C, dt, L)
    ref = dense_kernel(Lambda, P, B, C, dt, L)
    for impl in ("vectorized", "naive"):
        assert rel_error(s4_generating_kernel(Lambda, P, B, Ct, dt, L, cauchy_impl=impl), ref) < 1e-10, impl
    low = [x.to(torch.complex64).to(DEVICE) for x in (Lambda, P, B, Ct)]
    for impl in ("triton", "auto"):
        K = s4_generating_kernel(*low, dt.float().to(DEVICE), L, cauchy_impl=impl)
        assert K.dtype == torch.float32 and rel_error(K.cpu().double(), ref) < 1e-4, impl


def test_dplr_init_random_has_legs_decay_and_norms_but_not_its_frequencies():
    N = 16
    Lam_l, P_l, B_l = dplr_init(N, "legs")
    torch.manual_seed(3)
    Lam_r, P_r, B_r = dplr_init(N, "random")
    assert torch.all(Lam_r.real == -0.5) and torch.all(Lam_l.real == -0.5)
    assert abs(P_r.norm() - P_l.norm()) < 1e-10 and abs(B_r.norm() - B_l.norm()) < 1e-10
    assert Lam_l.imag.abs().max() > 10 * Lam_r.imag.abs().max()  # LegS spreads its frequencies
    assert torch.linalg.eigvals(dplr_dense(Lam_r, P_r)).real.max() < 0  # stable
    torch.manual_seed(3)
    assert torch.equal(dplr_init(N, "random")[0], Lam_r)  # the global seed fixes it
    with pytest.raises(ValueError, match="unknown init='legt'; valid: 'legs', 'random'"):
        dplr_init(N, "legt")
    with pytest.raises(ValueError, match="N must be an int >= 1"):
        dplr_init(0, "random")


@pytest.mark.parametrize("init", DPLR_INITS)
def test_layer_kernel_is_the_kernel_of_its_own_system(init):
    """For either initialisation (and on the device, through the Triton Cauchy kernel on a
    GPU), the layer's kernel equals the matrix-power kernel of (Ā, B̄, C) it recovers."""
    torch.manual_seed(4)
    layer = S4Layer(H=3, N=8, L_max=40, init=init).to(DEVICE)
    K = layer.kernel(40).detach().cpu().double()
    system = layer.recurrent_system()
    assert all(x.device == layer.Lambda.device for x in system)  # recurrent mode on the layer's device
    Ab, Bb, C = (x.cpu() for x in system)
    assert rel_error(K, ssm_kernel(Ab, Bb, C, 40).real) < 1e-4
    y = layer(torch.randn(2, 3, 40, device=DEVICE))
    y.sum().backward()
    assert torch.isfinite(layer.Lambda.grad).all() and torch.isfinite(layer.Ct.grad).all()


@pytest.mark.parametrize("init", DPLR_INITS)
def test_layer_gradients_through_the_triton_cauchy_kernel(init):
    """The layer's parameter gradients with the Triton Cauchy kernel (compiled on a GPU, the
    interpreter on CPU) equal those of the vectorized path, at the layer's own Δ and L."""
    torch.manual_seed(5)
    layer = S4Layer(H=3, N=8, L_max=40, init=init).to(DEVICE)
    grads = {}
    for impl in ("vectorized", "triton"):
        layer.zero_grad()
        K = s4_generating_kernel(*layer.ssm(), 40, cauchy_impl=impl)  # (H, L) float32
        (K * torch.linspace(-1, 1, 40, device=DEVICE)).sum().backward()
        grads[impl] = {n: getattr(layer, n).grad.cpu() for n in ("log_dt", "Lambda", "P", "B", "Ct")}
    for name, g in grads["triton"].items():
        assert torch.isfinite(g).all() and rel_error(g, grads["vectorized"][name]) < 1e-4, name
