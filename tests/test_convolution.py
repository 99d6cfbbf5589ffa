"""ssm_kernel, lti_recurrence and causal_conv (chapter 3): tiers, oracles, the Triton
kernel (interpreter on CPU, compiled on a GPU), gradients, bad input."""

import numpy as np
import pytest
import scipy.signal
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ssm_edu
from ssm_edu import causal_conv, lti_recurrence, ssm_kernel, toeplitz
from ssm_edu.numerics import rel_error, tolerance
from tiers import assert_tiers_agree

DEVICE = ssm_edu.default_device()
ON_GPU = DEVICE.type == "cuda"


def contractive(n, gen, batch=(), radius=0.9):
    """Random dense Ā (batch..., n, n) with spectral norm `radius`: its powers shrink monotonically."""
    M = torch.randn(*batch, n, n, generator=gen, dtype=torch.float64)
    return radius * M / torch.linalg.matrix_norm(M, ord=2)[..., None, None]


def decaying_kernel(shape, gen, L):
    """A random kernel that fades over the sequence, like an SSM's (shape (..., L))."""
    return torch.randn(*shape, L, generator=gen, dtype=torch.float64) * torch.exp(-torch.arange(L, dtype=torch.float64) / max(L / 4, 1))


# ---------------------------------------------------------------- ssm_kernel

KERNEL_CASES = [dict(N=1, L=1, batch=()), dict(N=1, L=50, batch=()), dict(N=5, L=7, batch=()), dict(N=4, L=100, batch=()),
                dict(N=3, L=33, batch=(2,)), dict(N=6, L=64, batch=(2, 1))]


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: f"N{c['N']}-L{c['L']}-b{c['batch']}")
def test_ssm_kernel_tiers(case):
    def make(dtype, gen):
        Ab = contractive(case["N"], gen, case["batch"])
        Bb = torch.randn(*case["batch"], case["N"], generator=gen, dtype=torch.float64)
        C = torch.randn(*case["batch"], case["N"], generator=gen, dtype=torch.float64)
        return (Ab, Bb, C, case["L"]), {}

    assert_tiers_agree(ssm_kernel, make, ["vectorized"], dtypes=(torch.float32, torch.bfloat16), label=str(case))


@pytest.mark.parametrize("impl", ["naive", "vectorized"])
def test_ssm_kernel_of_a_jordan_block(impl):
    """Non-diagonalisable Ā: [[a, 1], [0, a]]^k = [[a^k, k a^{k-1}], [0, a^k]], so with
    B̄ = (0, 1) and C = (1, 0) the kernel is k a^{k-1}. No eigendecomposition could do this."""
    a, L = 0.9, 40
    Ab = torch.tensor([[a, 1.0], [0.0, a]], dtype=torch.float64)
    K = ssm_kernel(Ab, torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64), L, impl=impl)
    k = torch.arange(L, dtype=torch.float64)
    assert rel_error(K, k * a ** (k - 1).clamp(min=0)) < 1e-13


def test_ssm_kernel_matches_matrix_powers(gen):
    Ab, Bb, C = contractive(4, gen), torch.randn(4, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)
    ref = torch.stack([C @ torch.linalg.matrix_power(Ab, k) @ Bb for k in range(20)])
    assert rel_error(ssm_kernel(Ab, Bb, C, 20), ref) < 1e-13


def test_ssm_kernel_diagonal_system_is_a_sum_of_geometric_sequences():
    lam = torch.tensor([0.5, -0.8, 0.99], dtype=torch.float64)
    B, C = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    k = torch.arange(30, dtype=torch.float64)
    ref = (C * B * lam ** k[:, None]).sum(-1)
    assert rel_error(ssm_kernel(torch.diag(lam), B, C, 30), ref) < 1e-13


def test_unstable_kernel_grows_like_the_spectral_radius():
    """An eigenvalue outside the unit circle: K_k grows like 1.05^k (chapter 3, "What goes wrong")."""
    K = ssm_kernel(torch.diag(torch.tensor([1.05, 0.5], dtype=torch.float64)), torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), 400)
    assert K[-1] / K[-101] == pytest.approx(1.05**100, rel=1e-8)


# ---------------------------------------------------------------- lti_recurrence


def test_lti_recurrence_matches_scipy(gen):
    """Independent oracle: scipy.signal.dlsim uses x[k+1] = A x[k] + B u[k], y[k] = C x[k] + D u[k].
    Our y_k = C x_k + D u_k with x_k = Ā x_{k-1} + B̄ u_k is that system with C' = C Ā and
    D' = C B̄ + D (x_k of scipy is our x_{k-1})."""
    N, L, D = 3, 60, 0.7
    Ab, Bb, C = contractive(N, gen), torch.randn(N, generator=gen, dtype=torch.float64), torch.randn(N, generator=gen, dtype=torch.float64)
    u = torch.randn(L, generator=gen, dtype=torch.float64)
    sys = (Ab.numpy(), Bb.numpy()[:, None], (C @ Ab).numpy()[None, :], np.array([[(C @ Bb).item() + D]]), 1.0)
    _, y_ref, _ = scipy.signal.dlsim(sys, u.numpy())
    assert rel_error(lti_recurrence(Ab, Bb, C, u, D=D), torch.from_numpy(y_ref[:, 0])) < 1e-12


@pytest.mark.parametrize("shape", [(1,), (40,), (2, 3, 17)])
def test_recurrence_equals_convolution_with_the_kernel(shape, gen):
    """The duality of chapter 3: recurrent mode == convolutional mode (+ D u)."""
    Ab, Bb, C = contractive(4, gen), torch.randn(4, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)
    u = torch.randn(shape, generator=gen, dtype=torch.float64)
    L = shape[-1]
    K = ssm_kernel(Ab, Bb, C, L)
    u3 = u.reshape(-1, 1, L)
    y_conv = (causal_conv(u3, K, impl="naive") + 0.3 * u3).reshape(shape)
    assert rel_error(lti_recurrence(Ab, Bb, C, u, D=torch.tensor(0.3, dtype=torch.float64)), y_conv) < 1e-12


def test_lti_recurrence_precision():
    """bfloat16 / float32 inputs accumulate in float32; the output has the input dtype."""
    gen = torch.Generator().manual_seed(0)
    Ab, Bb, C = contractive(4, gen), torch.randn(4, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)
    u = torch.randn(2, 80, generator=gen, dtype=torch.float64)
    for dtype in (torch.float32, torch.bfloat16):
        low = [x.to(dtype) for x in (Ab, Bb, C, u)]
        ref = lti_recurrence(*[x.double() for x in low])
        out = lti_recurrence(*low)
        assert out.dtype == dtype and rel_error(out, ref) < tolerance(dtype)


# ---------------------------------------------------------------- causal_conv

CONV_CASES = [(1, 1, 1, False), (2, 3, 37, False), (1, 4, 64, False), (3, 2, 100, True), (1, 1, 129, True)]


@pytest.mark.parametrize("b,H,L,shared", CONV_CASES)
def test_causal_conv_tiers(b, H, L, shared):
    def make(dtype, gen):
        u = torch.randn(b, H, L, generator=gen, dtype=torch.float64)
        return (u, decaying_kernel(() if shared else (H,), gen, L)), {}

    assert_tiers_agree(causal_conv, make, ["vectorized"], dtypes=(torch.float32, torch.bfloat16), label=f"{b}x{H}x{L}")


def test_causal_conv_matches_numpy_convolve(gen):
    """Oracle: np.convolve(u, K)[:L], the full linear convolution truncated to L."""
    u, K = torch.randn(1, 1, 50, generator=gen, dtype=torch.float64), torch.randn(50, generator=gen, dtype=torch.float64)
    ref = torch.from_numpy(np.convolve(u[0, 0].numpy(), K.numpy())[:50])
    for impl in ("naive", "vectorized"):
        assert rel_error(causal_conv(u, K, impl=impl)[0, 0], ref) < 1e-13


def test_toeplitz_matrix_has_constant_diagonals_and_applies_the_convolution(gen):
    L = 12
    K, u = torch.randn(2, L, generator=gen, dtype=torch.float64), torch.randn(3, 2, L, generator=gen, dtype=torch.float64)
    T = toeplitz(K)  # (2, L, L)
    assert torch.equal(T.triu(1), torch.zeros_like(T))
    for j in range(L):
        assert torch.equal(torch.diagonal(T, -j, dim1=-2, dim2=-1), K[:, j : j + 1].expand(2, L - j))
    assert rel_error(torch.einsum("hts,bhs->bht", T, u), causal_conv(u, K, impl="naive")) < 1e-14


def test_fft_without_padding_is_circular(gen):
    """Padding to L instead of 2L wraps the tail of the kernel around: wrong (chapter 3)."""
    L = 64
    u, K = torch.randn(1, 1, L, generator=gen, dtype=torch.float64), torch.ones(L, dtype=torch.float64)
    circular = torch.fft.irfft(torch.fft.rfft(u, n=L) * torch.fft.rfft(K, n=L), n=L)
    assert rel_error(circular, causal_conv(u, K, impl="naive")) > 0.1
    assert torch.allclose(circular, u.sum(-1, keepdim=True).expand(1, 1, L))  # with K = 1 every output sees all of u


@settings(max_examples=20, deadline=None)
@given(b=st.integers(1, 3), H=st.integers(1, 4), L=st.integers(1, 80), shared=st.booleans(), seed=st.integers(0, 2**16))
def test_causal_conv_property(b, H, L, shared, seed):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(b, H, L, generator=gen, dtype=torch.float64)
    K = torch.randn(*(() if shared else (H,)), L, generator=gen, dtype=torch.float64)
    assert rel_error(causal_conv(u, K, impl="vectorized"), causal_conv(u, K, impl="naive")) < 1e-12


# ---------------------------------------------------------------- the Triton kernel

# Interpreter sizes stay at a few thousand elements; on a GPU add long and odd lengths.
TRITON_CASES = [(1, 1, 1, False), (2, 3, 37, False), (1, 2, 100, False), (3, 1, 33, True), (17, 1, 20, False), (1, 1, 300, True)]
if ON_GPU:
    TRITON_CASES += [(2, 4, 1000, False), (1, 2, 4097, False), (64, 2, 257, True), (65, 3, 130, False), (5, 2, 2048, False)]
TRITON_DTYPES = [torch.float32] + ([torch.bfloat16, torch.float16] if ON_GPU else [])


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("b,H,L,shared", TRITON_CASES)
def test_causal_conv_triton(b, H, L, shared, dtype, gen):
    """Against the naive version in float64 on the same (rounded) inputs; odd L, batch 1, batch > block."""
    u = torch.randn(b, H, L, generator=gen, dtype=torch.float64).to(dtype)
    K = decaying_kernel(() if shared else (H,), gen, L).to(dtype)
    ref = causal_conv(u.double(), K.double(), impl="naive")
    out = causal_conv(u.to(DEVICE), K.to(DEVICE), impl="triton")
    assert out.dtype == dtype and out.shape == (b, H, L) and out.device.type == DEVICE.type
    err = rel_error(out, ref)
    assert err < tolerance(dtype), f"relative error {err:.3g}"


def test_causal_conv_triton_is_auto_on_gpu():
    from ssm_edu._dispatch import dispatch

    fn = dispatch("causal_conv", "auto", (torch.zeros(1, device=DEVICE),), naive=print, vectorized=len, triton="causal_conv:causal_conv_triton")
    assert (fn.__name__ == "causal_conv_triton") == ON_GPU


def test_causal_conv_triton_gradients_match_vectorized(gen):
    """The Triton path is differentiable: du through the kernel on reversed time, dK by FFT."""
    for shared in (False, True):
        u = torch.randn(2, 3, 37, generator=gen).to(DEVICE).requires_grad_()
        K = torch.randn(*(() if shared else (3,)), 37, generator=gen).to(DEVICE).requires_grad_()
        w = torch.randn(2, 3, 37, generator=gen).to(DEVICE)  # a random loss direction
        grads = {}
        for impl in ("vectorized", "triton"):
            (causal_conv(u, K, impl=impl) * w).sum().backward()
            grads[impl] = (u.grad.clone(), K.grad.clone())
            u.grad = K.grad = None
        for a, b in zip(grads["triton"], grads["vectorized"]):
            assert rel_error(a, b) < 1e-5


def test_causal_conv_triton_rejects_float64_and_auto_avoids_it():
    u, K = torch.randn(1, 1, 8, dtype=torch.float64, device=DEVICE), torch.randn(8, dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="use impl='vectorized' for float64"):
        causal_conv(u, K, impl="triton")
    assert rel_error(causal_conv(u, K), causal_conv(u, K, impl="naive")) < 1e-12  # auto: vectorized for float64


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("impl", ["naive", "vectorized"])
def test_ssm_kernel_gradcheck(impl, gen):
    Ab = contractive(3, gen).requires_grad_()
    Bb = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    C = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: ssm_kernel(a, b, c, 11, impl=impl), (Ab, Bb, C))


@pytest.mark.parametrize("impl", ["naive", "vectorized"])
@pytest.mark.parametrize("shared", [False, True])
def test_causal_conv_gradcheck(impl, shared, gen):
    u = torch.randn(2, 3, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    K = torch.randn(*(() if shared else (3,)), 9, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, K: causal_conv(u, K, impl=impl), (u, K))


def test_lti_recurrence_gradcheck(gen):
    Ab = contractive(3, gen).requires_grad_()
    Bb = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    C = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    u = torch.randn(2, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    D = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c, u, d: lti_recurrence(a, b, c, u, D=d), (Ab, Bb, C, u, D))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.zeros(8), torch.zeros(8)), r"u must have shape \(b, H, L\); got \(8,\)"),
        ((torch.zeros(2, 3, 8), torch.zeros(3, 7)), r"K must have shape \(H, L\) = \(3, 8\) or \(L,\) = \(8,\); got \(3, 7\)"),
        ((torch.zeros(2, 3, 8), torch.zeros(4, 8)), r"K must have shape \(H, L\) = \(3, 8\)"),
        ((torch.zeros(2, 3, 8), torch.zeros(9)), r"K must have shape"),
        ((torch.zeros(2, 3, 8, dtype=torch.int64), torch.zeros(8)), r"u has dtype int64"),
        ((torch.zeros(2, 3, 8), torch.zeros(8, dtype=torch.complex64)), r"K has dtype complex64"),
        ((torch.zeros(2, 3, 8), torch.zeros(8, device="meta")), r"one device"),
    ],
)
def test_causal_conv_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        causal_conv(*args)


def test_causal_conv_bad_impl():
    with pytest.raises(ValueError, match=r"unknown impl='fft'; valid: 'auto', 'naive', 'vectorized', 'triton'"):
        causal_conv(torch.zeros(1, 1, 4), torch.zeros(4), impl="fft")
    with pytest.raises(TypeError, match="u must be a torch.Tensor"):
        causal_conv([[[1.0]]], torch.zeros(1))


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.zeros(3), torch.zeros(3), torch.zeros(3), 4), r"Ab must have shape \(N, N\)"),
        ((torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 4), r"Ab must have shape \(\.\.\., N, N\)"),
        ((torch.zeros(3, 3), torch.zeros(4), torch.zeros(3), 4), r"Bb must have shape \(\.\.\., N\) = \(3,\); got \(4,\)"),
        ((torch.zeros(3, 3), torch.zeros(3), torch.zeros(2), 4), r"C must have shape"),
        ((torch.zeros(2, 3, 3), torch.zeros(3, 3), torch.zeros(2, 3), 4), r"Bb must have shape"),
        ((torch.zeros(3, 3), torch.zeros(3), torch.zeros(3), 0), r"L must be an int >= 1; got 0"),
        ((torch.zeros(3, 3), torch.zeros(3), torch.zeros(3), 2.0), r"L must be an int >= 1; got 2.0"),
        ((torch.zeros(3, 3), torch.zeros(3, device="meta"), torch.zeros(3), 4), r"one device"),
        ((torch.zeros(3, 3, dtype=torch.int32), torch.zeros(3), torch.zeros(3), 4), r"Ab has dtype int32"),
    ],
)
def test_ssm_kernel_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        ssm_kernel(*args)


def test_ssm_kernel_bad_impl():
    with pytest.raises(ValueError, match=r"unknown impl='triton'; valid: 'auto', 'naive', 'vectorized'"):
        ssm_kernel(torch.eye(2), torch.ones(2), torch.ones(2), 4, impl="triton")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(u=torch.zeros(())), r"u must have shape \(\.\.\., L\); got \(\)"),
        (dict(Ab=torch.zeros(3, 2)), r"Ab must have shape \(N, N\)"),
        (dict(Bb=torch.zeros(4)), r"Bb must have shape \(N,\) = \(3,\); got \(4,\)"),
        (dict(C=torch.zeros(3, 1)), r"C must have shape \(N,\)"),
        (dict(D=torch.zeros(2)), r"D must be a number or a 0-dim tensor; got shape \(2,\)"),
        (dict(D="1"), r"D must be a number or a 0-dim tensor"),
        (dict(u=torch.zeros(5, device="meta")), r"one device"),
    ],
)
def test_lti_recurrence_bad_input(kwargs, match):
    args = dict(Ab=torch.eye(3), Bb=torch.ones(3), C=torch.ones(3), u=torch.zeros(5), D=None) | kwargs
    with pytest.raises(ValueError, match=match):
        lti_recurrence(**args)


def test_empty_sequences_are_rejected_clearly():
    from ssm_edu import causal_conv, lti_recurrence

    with pytest.raises(ValueError, match="causal_conv: L must be >= 1; got L = 0"):
        causal_conv(torch.zeros(1, 2, 0), torch.zeros(2, 0))
    with pytest.raises(ValueError, match="lti_recurrence: L must be >= 1; got L = 0"):
        lti_recurrence(torch.eye(2), torch.ones(2), torch.ones(2), torch.zeros(0))
    with pytest.raises(ValueError, match=r"lti_recurrence: u must have shape \(\.\.\., L\)"):
        lti_recurrence(torch.eye(2), torch.ones(2), torch.ones(2), torch.tensor(1.0))
