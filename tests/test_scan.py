"""linear_scan (chapter 6): tiers, the associative operator, the Triton kernel
(interpreter on CPU, compiled on a GPU), gradients, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ssm_edu
from ssm_edu import linear_scan
from ssm_edu.numerics import rel_error, tolerance
from ssm_edu.scan import scan_combine
from tiers import assert_tiers_agree

DEVICE = ssm_edu.default_device()
ON_GPU = DEVICE.type == "cuda"
FAST = ["vectorized", "hillis_steele", "blocked"]


def decays(shape, gen, complex_=False):
    """|a| in [0.5, 1): the decays of a stable diagonal SSM."""
    r = 0.5 + 0.5 * torch.rand(shape, generator=gen, dtype=torch.float64)
    if not complex_:
        return r
    return r * torch.exp(1j * torch.rand(shape, generator=gen, dtype=torch.float64) * torch.pi)


def inputs(batch, L, gen, complex_=False, h0=False):
    a = decays((*batch, L), gen, complex_)
    b = torch.randn(*batch, L, generator=gen, dtype=torch.complex128 if complex_ else torch.float64)
    h = torch.randn(tuple(batch), generator=gen, dtype=b.dtype) if h0 else None
    return a, b, h


CASES = [((), 1), ((1,), 7), ((2, 3), 100), ((1,), 1000), ((3,), 64), ((2,), 65)]


@pytest.mark.parametrize("batch,L", CASES)
@pytest.mark.parametrize("h0", [False, True])
def test_linear_scan_tiers_real(batch, L, h0):
    def make(dtype, gen):
        return inputs(batch, L, gen, h0=h0), {}

    assert_tiers_agree(linear_scan, make, FAST, dtypes=(torch.float32, torch.bfloat16), label=f"{batch} L={L}")


@pytest.mark.parametrize("batch,L", CASES[:4])
def test_linear_scan_tiers_complex(batch, L):
    def make(dtype, gen):
        return inputs(batch, L, gen, complex_=True, h0=True), {}

    assert_tiers_agree(linear_scan, make, FAST, dtypes=(torch.float32,), label=f"complex {batch} L={L}")


def test_combine_is_associative_and_has_an_identity(gen):
    p, q, r = [(torch.randn(5, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64)) for _ in range(3)]
    left = scan_combine(scan_combine(p, q), r)
    right = scan_combine(p, scan_combine(q, r))
    assert all(rel_error(x, y) < 1e-14 for x, y in zip(left, right))
    one = (torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64))
    assert all(torch.equal(x, y) for x, y in zip(scan_combine(one, p), p))
    assert all(torch.equal(x, y) for x, y in zip(scan_combine(p, one), p))
    # not commutative: the order of the steps matters
    assert rel_error(scan_combine(p, q)[1], scan_combine(q, p)[1]) > 0.1


def test_scan_equals_the_loop_written_out(gen):
    """Oracle: a literal Python loop over floats, independent of the package."""
    a, b, h0 = inputs((), 30, gen, h0=True)
    h, ref = h0.item(), []
    for t in range(30):
        h = a[t].item() * h + b[t].item()
        ref.append(h)
    for impl in ["naive", *FAST]:
        assert rel_error(linear_scan(a, b, h0, impl=impl), torch.tensor(ref, dtype=torch.float64)) < 1e-13


def test_constant_decay_is_a_geometric_sum():
    """a = ρ, b = 1: h_t = (1 - ρ^{t+1}) / (1 - ρ)."""
    L, rho = 50, 0.9
    t = torch.arange(L, dtype=torch.float64)
    for impl in ["naive", *FAST]:
        h = linear_scan(torch.full((L,), rho, dtype=torch.float64), torch.ones(L, dtype=torch.float64), impl=impl)
        assert rel_error(h, (1 - rho ** (t + 1)) / (1 - rho)) < 1e-13


@settings(max_examples=25, deadline=None)
@given(batch=st.lists(st.integers(1, 3), max_size=2), L=st.integers(1, 150), seed=st.integers(0, 2**16), h0=st.booleans())
def test_linear_scan_property(batch, L, seed, h0):
    gen = torch.Generator().manual_seed(seed)
    a, b, h = inputs(tuple(batch), L, gen, h0=h0)
    ref = linear_scan(a, b, h, impl="naive")
    for impl in FAST:
        assert rel_error(linear_scan(a, b, h, impl=impl), ref) < 1e-12


# ---------------------------------------------------------------- the Triton kernel

# Interpreter: a few thousand elements at most (its associative_scan loops in Python).
TRITON_CASES = [((), 1), ((1,), 7), ((2, 3), 100), ((1,), 1000), ((5,), 33), ((3,), 64)]
if ON_GPU:
    TRITON_CASES += [((4, 8), 4097), ((1,), 100_000), ((1000,), 257), ((2, 16, 16), 2048)]
TRITON_DTYPES = [torch.float32] + ([torch.bfloat16, torch.float16] if ON_GPU else [])


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("batch,L", TRITON_CASES)
@pytest.mark.parametrize("h0", [False, True])
def test_linear_scan_triton(batch, L, h0, dtype, gen):
    """Against the naive version in float64 on the same (rounded) inputs; odd L, batch 1, L = 1."""
    a, b, h = (x if x is None else x.to(dtype) for x in inputs(batch, L, gen, h0=h0))
    ref = linear_scan(a.double(), b.double(), None if h is None else h.double(), impl="naive")
    out = linear_scan(a.to(DEVICE), b.to(DEVICE), None if h is None else h.to(DEVICE), impl="triton")
    assert out.dtype == dtype and out.shape == b.shape and out.device.type == DEVICE.type
    err = rel_error(out, ref)
    assert err < tolerance(dtype), f"relative error {err:.3g}"


def test_linear_scan_triton_gradients_match_vectorized(gen):
    """The Triton path is differentiable: its backward pass is the reverse scan."""
    for with_h0 in (False, True):
        a, b, h0 = (x if x is None else x.float().to(DEVICE).requires_grad_() for x in inputs((2, 3), 45, gen, h0=with_h0))
        w = torch.randn(2, 3, 45, generator=gen).to(DEVICE)  # a random loss direction
        grads = {}
        for impl in ("vectorized", "triton"):
            (linear_scan(a, b, h0, impl=impl) * w).sum().backward()
            grads[impl] = [x.grad.clone() for x in (a, b, h0) if x is not None]
            for x in (a, b, h0):
                if x is not None:
                    x.grad = None
        for x, y in zip(grads["triton"], grads["vectorized"]):
            assert rel_error(x, y) < 1e-5


def test_linear_scan_triton_rejects_complex_and_float64():
    a, b, _ = inputs((2,), 8, torch.Generator().manual_seed(0), complex_=True)
    with pytest.raises(ValueError, match="impl='triton' supports real inputs only; got complex128"):
        linear_scan(a.to(DEVICE), b.to(DEVICE), impl="triton")
    with pytest.raises(ValueError, match="use impl='vectorized' for float64"):
        linear_scan(a.real.to(DEVICE), b.real.to(DEVICE), impl="triton")
    # auto never picks the kernel for these
    assert rel_error(linear_scan(a, b), linear_scan(a, b, impl="naive")) < 1e-12


def test_linear_scan_triton_is_auto_on_gpu():
    a = torch.full((2, 8), 0.5, device=DEVICE)
    from ssm_edu._dispatch import dispatch

    fn = dispatch("linear_scan", "auto", (a,), naive=print, vectorized=len, triton="scan:linear_scan_triton")
    assert (fn.__name__ == "linear_scan_triton") == ON_GPU


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("impl", ["naive", *FAST])
@pytest.mark.parametrize("complex_", [False, True])
def test_linear_scan_gradcheck(impl, complex_, gen):
    a, b, h0 = (x.requires_grad_() for x in inputs((2,), 9, gen, complex_=complex_, h0=True))
    assert torch.autograd.gradcheck(lambda a, b, h0: linear_scan(a, b, h0, impl=impl), (a, b, h0))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.zeros(()), torch.zeros(())), r"a must have shape \(\.\.\., L\); got \(\)"),
        ((torch.zeros(2, 8), torch.zeros(2, 7)), r"b must have shape \(\.\.\., L\) = \(2, 8\); got \(2, 7\)"),
        ((torch.zeros(2, 8), torch.zeros(3, 8)), r"b must have shape \(\.\.\., L\) = \(2, 8\); got \(3, 8\)"),
        ((torch.zeros(2, 8), torch.zeros(2, 8), torch.zeros(3)), r"h0 must have shape \(\.\.\.,\) = \(2,\); got \(3,\)"),
        ((torch.zeros(2, 0), torch.zeros(2, 0)), r"L must be >= 1; got L = 0"),
        ((torch.zeros(2, 8, dtype=torch.int64), torch.zeros(2, 8)), r"a has dtype int64"),
        ((torch.zeros(2, 8), torch.zeros(2, 8, device="meta")), r"one device"),
    ],
)
def test_linear_scan_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        linear_scan(*args)


def test_linear_scan_bad_impl():
    with pytest.raises(ValueError, match=r"unknown impl='loop'; valid: 'auto', 'naive', 'vectorized'"):
        linear_scan(torch.zeros(4), torch.zeros(4), impl="loop")
