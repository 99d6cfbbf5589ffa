"""s4d_kernel, the S4D initialisations and the S4D / S5 layers (chapter 6): tiers,
oracles, gradients, bad input."""

import math

import pytest
import torch

from ssm_edu import S4D, S5, S4D_INITS, discretize_diag, hippo, linear_scan, s4d_init, s4d_kernel
from ssm_edu.diagonal import SequenceClassifier, legs_diagonal
from ssm_edu.numerics import rel_error
from tiers import assert_tiers_agree


def diag_system(H, N, gen, init="lin"):
    """A (H, N) stable complex modes, B, C (H, N) complex, dt (H,) in [1e-3, 1e-1] (log-uniform)."""
    A = s4d_init(2 * N, init).expand(H, N).clone()
    B = torch.randn(H, N, generator=gen, dtype=torch.complex128)
    C = torch.randn(H, N, generator=gen, dtype=torch.complex128)
    dt = torch.exp(math.log(1e-3) + torch.rand(H, generator=gen, dtype=torch.float64) * math.log(100))
    return A, B, C, dt


KERNEL_CASES = [(1, 1, 1), (1, 4, 7), (3, 8, 100), (2, 16, 1000), (4, 2, 33)]


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
@pytest.mark.parametrize("H,N,L", KERNEL_CASES)
def test_s4d_kernel_tiers(H, N, L, method):
    def make(dtype, gen):
        return (*diag_system(H, N, gen), L), dict(method=method)

    # float32: Ā^l carries a relative error ~ l ε (the phase l Δ Im Λ is rounded), so at L = 1000
    # no float32 computation that forms Ā meets 1e-5 (chapter 6, "What goes wrong"); float64 only there.
    dtypes = (torch.float32,) if L <= 100 else ()
    assert_tiers_agree(s4d_kernel, make, ["vectorized"], dtypes=dtypes, label=f"H{H} N{N} L{L} {method}")


@pytest.mark.parametrize("init", S4D_INITS)
@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_vandermonde_kernel_is_the_impulse_response(init, method, gen):
    """Oracle: run the diagonal recurrence on a unit impulse; y = 2 Re(C x) is the kernel."""
    H, N, L = 2, 8, 200
    A, B, C, dt = diag_system(H, N, gen, init)
    Ab, Bb = discretize_diag(A, B, dt[:, None], method=method)  # (H, N)
    u = torch.zeros(L, dtype=torch.float64)
    u[0] = 1.0
    x = linear_scan(Ab[..., None].expand(H, N, L), Bb[..., None] * u, impl="naive")  # (H, N, L)
    y = 2 * torch.einsum("hn,hnl->hl", C, x).real
    for impl in ("naive", "vectorized"):
        assert rel_error(s4d_kernel(A, B, C, dt, L, method=method, impl=impl), y) < 1e-12


def test_conjugate_halves_equal_the_full_real_system(gen):
    """Oracle: 2 Re over N modes = the kernel of the full 2N-state system with the conjugates,
    computed by dense matrix powers (no diagonal structure used)."""
    H, N, L = 1, 6, 64
    A, B, C, dt = diag_system(H, N, gen, "inv")
    lam = torch.cat([A[0], A[0].conj()])  # (2N,)
    Bf, Cf = torch.cat([B[0], B[0].conj()]), torch.cat([C[0], C[0].conj()])
    Ab = torch.linalg.matrix_exp(dt[0] * torch.diag(lam))  # (2N, 2N)
    Bb = torch.linalg.solve(torch.diag(lam), (Ab - torch.eye(2 * N)) @ Bf)  # ZOH, dense
    full = torch.stack([Cf @ torch.linalg.matrix_power(Ab, l) @ Bb for l in range(L)])  # (L,) complex
    assert full.imag.abs().max() < 1e-10 * full.real.abs().max()  # real, as promised
    assert rel_error(s4d_kernel(A, B, C, dt, L)[0], full.real) < 1e-10


def test_legs_diagonal_is_the_spectrum_of_the_normal_part():
    """Oracle: torch.linalg.eigvals of A + P Pᵀ (a general, non-Hermitian solver)."""
    N = 16
    A, _ = hippo(N, "legs")
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    ev = torch.linalg.eigvals(A + torch.outer(P, P))
    lam = legs_diagonal(N)
    assert lam.shape == (N // 2,) and torch.allclose(lam.real, torch.full((N // 2,), -0.5, dtype=torch.float64))
    want = torch.sort(ev[ev.imag < 0].imag).values
    assert torch.allclose(torch.sort(lam.imag).values, want, atol=1e-9)


def test_float32_kernel_error_grows_with_the_lag(gen):
    """The float32 kernel's error at lag l grows roughly like l ε |Δ Im Λ|: late lags are worse."""
    A, B, C, dt = diag_system(2, 16, gen)
    L = 4000
    low = [x.to(torch.complex64) for x in (A, B, C)] + [dt.float()]
    ref = s4d_kernel(*[x.to(torch.complex128) for x in low[:3]], low[3].double(), L)
    out = s4d_kernel(*low, L)
    assert rel_error(out[:, :100], ref[:, :100]) < 1e-5 < rel_error(out[:, -500:], ref[:, -500:])


def test_s4d_initialisations():
    N = 8
    n = torch.arange(4, dtype=torch.float64)
    assert torch.allclose(s4d_init(N, "lin"), torch.complex(-0.5 * torch.ones(4, dtype=torch.float64), math.pi * n))
    assert torch.allclose(s4d_init(N, "real"), torch.complex(-(n + 1), torch.zeros(4, dtype=torch.float64)))
    assert torch.allclose(s4d_init(N, "inv").imag, N / math.pi * (N / (2 * n + 1) - 1))
    # S4D-Inv approximates LegS's frequencies (the reason for its formula)
    big = 64
    ratio = s4d_init(big, "inv").imag.abs().sort().values / s4d_init(big, "legs").imag.abs().sort().values
    assert ((ratio > 0.5) & (ratio < 1.5)).float().mean() > 0.9
    with pytest.raises(ValueError, match="unknown init='hippo'"):
        s4d_init(8, "hippo")
    with pytest.raises(ValueError, match="N must be an even int"):
        s4d_init(7, "lin")


@pytest.mark.parametrize("impl", ["naive", "vectorized"])
@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_s4d_kernel_gradcheck(impl, method, gen):
    A, B, C, dt = (x.requires_grad_() for x in diag_system(2, 3, gen))
    assert torch.autograd.gradcheck(lambda A, B, C, dt: s4d_kernel(A, B, C, dt, 9, method=method, impl=impl), (A, B, C, dt))


def test_s4d_layer_shapes_and_gradients():
    torch.manual_seed(0)
    for init in S4D_INITS:
        layer = S4D(4, N=8, init=init)
        u = torch.randn(2, 4, 17)
        y = layer(u)
        assert y.shape == (2, 4, 17) and torch.isfinite(y).all()
        y.square().sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_s4d_layer_is_causal():
    torch.manual_seed(0)
    layer = S4D(3, N=8)
    u = torch.randn(1, 3, 20)
    u2 = u.clone()
    u2[..., 10:] += 1.0
    assert torch.allclose(layer(u)[..., :10], layer(u2)[..., :10], atol=1e-6)


def test_s5_ssm_equals_the_full_system_with_conjugate_pairs():
    """Oracle: S5's 2 Re(C̃ x) over P/2 modes = a loop over the full P-mode complex MIMO system."""
    torch.manual_seed(0)
    H, P, L = 3, 8, 25
    layer = S5(H, P).double()
    u = torch.randn(2, H, L, dtype=torch.float64)
    lam = layer.A()
    Ab, Bs = discretize_diag(lam, torch.ones_like(lam), torch.exp(layer.log_dt))
    Bb = Bs[:, None] * torch.view_as_complex(layer.B)  # (P/2, H)
    Ab_f, Bb_f = torch.cat([Ab, Ab.conj()]), torch.cat([Bb, Bb.conj()])  # (P,), (P, H)
    C_f = torch.cat([torch.view_as_complex(layer.C), torch.view_as_complex(layer.C).conj()], dim=1)  # (H, P)
    x = torch.zeros(2, P, dtype=torch.complex128)
    ys = []
    for k in range(L):
        x = Ab_f * x + u[..., k].to(torch.complex128) @ Bb_f.T  # (2, P)
        ys.append(x @ C_f.T)  # (2, H)
    y_full = torch.stack(ys, dim=-1)  # (2, H, L)
    assert y_full.imag.abs().max() < 1e-12
    assert rel_error(layer.ssm(u), y_full.real + layer.D[:, None] * u) < 1e-12


def test_s5_scan_impls_agree():
    torch.manual_seed(0)
    layer = S5(4, 8).double()
    u = torch.randn(2, 4, 30, dtype=torch.float64)
    ref = layer.ssm(u)
    for impl in ("naive", "hillis_steele", "blocked"):
        layer.scan_impl = impl
        assert rel_error(layer.ssm(u), ref) < 1e-12


def test_sequence_classifier_runs():
    torch.manual_seed(0)
    for make in (lambda H: S4D(H, N=8), lambda H: S5(H, P=8)):
        model = SequenceClassifier(make, H=8, depth=2, n_classes=10)
        logits = model(torch.randn(5, 64))
        assert logits.shape == (5, 10)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(A=torch.zeros(4, dtype=torch.complex64)), r"A must have shape \(H, N\); got \(4,\)"),
        (dict(B=torch.zeros(2, 5, dtype=torch.complex64)), r"B must have shape \(H, N\) = \(2, 4\); got \(2, 5\)"),
        (dict(C=torch.zeros(3, 4, dtype=torch.complex64)), r"C must have shape \(H, N\) = \(2, 4\); got \(3, 4\)"),
        (dict(dt=torch.ones(3)), r"dt must have shape \(H,\) = \(2,\); got \(3,\)"),
        (dict(dt=-torch.ones(2)), r"dt must be real, finite and > 0"),
        (dict(L=0), r"L must be an int >= 1; got 0"),
        (dict(method="euler"), r"unknown method='euler'"),
        (dict(A=torch.zeros(2, 4, dtype=torch.int64)), r"A has dtype int64"),
        (dict(C=torch.zeros(2, 4, dtype=torch.complex64, device="meta")), r"one device"),
    ],
)
def test_s4d_kernel_bad_input(kwargs, match):
    args = dict(A=-torch.ones(2, 4, dtype=torch.complex64), B=torch.ones(2, 4, dtype=torch.complex64),
                C=torch.ones(2, 4, dtype=torch.complex64), dt=torch.ones(2), L=8) | kwargs
    with pytest.raises(ValueError, match=match):
        s4d_kernel(**args)


def test_s4d_kernel_bad_impl():
    with pytest.raises(ValueError, match=r"unknown impl='triton'; valid: 'auto', 'naive', 'vectorized'"):
        s4d_kernel(-torch.ones(1, 2, dtype=torch.complex64), torch.ones(1, 2, dtype=torch.complex64),
                   torch.ones(1, 2, dtype=torch.complex64), torch.ones(1), 4, impl="triton")
