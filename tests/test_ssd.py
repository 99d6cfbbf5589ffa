"""ssd (chapter 8): the four impls agree, chunk-size independence, groups, D, z,
dt_bias/softplus, initial/final states, segsum stability, gradients, the Triton
kernel (interpreter on CPU, compiled on a GPU), bad input."""

import pytest
import torch
import torch.nn.functional as F

import ssm_edu
from ssm_edu import rel_error, segsum, segsum_unstable, ssd
from ssm_edu.numerics import tolerance
from ssm_edu.ssd import (ssd_chunk_states, ssd_diagonal_blocks, ssd_mask, ssd_off_diagonal, ssd_state_passing)
from tiers import assert_tiers_agree

DEVICE = ssm_edu.default_device()
ON_GPU = DEVICE.type == "cuda"
F64 = torch.float64


def make(b, L, H, P, G, N, gen, D=None, z=False, bias=False, softplus=False, h0=False, final=False, chunk=16):
    """Random inputs in float64: Δ > 0 (or raw values for softplus), A < 0 (decaying heads)."""
    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    dt = r(b, L, H) if softplus else 0.05 + 0.5 * torch.rand(b, L, H, generator=gen, dtype=F64)
    A = -(0.2 + 2 * torch.rand(H, generator=gen, dtype=F64))
    args = (r(b, L, H, P), dt, A, 0.5 * r(b, L, G, N), 0.5 * r(b, L, G, N))
    kwargs = dict(chunk_size=chunk, dt_softplus=softplus, return_final_states=final)
    if D == "h":
        kwargs["D"] = r(H)
    elif D == "hp":
        kwargs["D"] = r(H, P)
    if z:
        kwargs["z"] = r(b, L, H, P)
    if bias:
        kwargs["dt_bias"] = 0.5 * r(H)
    if h0:
        kwargs["initial_states"] = r(b, H, P, N)
    return args, kwargs


# (b, L, H, P, G, N, chunk): L = 1, L not a multiple of the chunk, batch 1, groups
SHAPES = [(1, 1, 1, 1, 1, 1, 16), (2, 37, 4, 3, 2, 5, 16), (1, 64, 2, 4, 1, 8, 16),
          (2, 65, 4, 2, 4, 3, 8), (1, 50, 6, 5, 3, 4, 64)]
OPTIONS = [dict(), dict(D="h", z=True), dict(D="hp", bias=True, softplus=True), dict(h0=True, final=True),
           dict(D="hp", z=True, bias=True, softplus=True, h0=True, final=True)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o) or "plain")
def test_ssd_tiers_agree(shape, options):
    """quadratic and vectorized equal naive in float64 (1e-10), and each is within tolerance in float32 and bfloat16."""
    *dims, chunk = shape

    def inputs(dtype, gen):
        return make(*dims, gen, chunk=chunk, **options)

    assert_tiers_agree(ssd, inputs, ["quadratic", "vectorized"], dtypes=(torch.float32, torch.bfloat16),
                       label=f"{shape} {options}")


def test_ssd_naive_is_the_recurrence_written_out(gen):
    """Oracle: a literal loop over floats for one head, P = N = 1, independent of the package."""
    (x, dt, A, B, C), _ = make(1, 20, 1, 1, 1, 1, gen)
    h, ref = 0.0, []
    for t in range(20):
        h = torch.exp(dt[0, t, 0] * A[0]).item() * h + dt[0, t, 0].item() * x[0, t, 0, 0].item() * B[0, t, 0, 0].item()
        ref.append(h * C[0, t, 0, 0].item())
    ref = torch.tensor(ref, dtype=F64)
    for impl in ("naive", "quadratic", "vectorized"):
        assert rel_error(ssd(x, dt, A, B, C, impl=impl)[0, :, 0, 0], ref) < 1e-13


@pytest.mark.parametrize("impl", ["vectorized", "triton"])
def test_ssd_does_not_depend_on_chunk_size(impl, gen):
    """Chunk sizes that divide L, that do not, larger than L, and 1."""
    dtype = F64 if impl == "vectorized" else torch.float32
    device = DEVICE if impl == "triton" else "cpu"
    args, kwargs = make(2, 37, 2, 3, 1, 4, gen, D="h", h0=True, final=True)
    args = [a.to(device, dtype) for a in args]
    kwargs = {k: (v.to(device, dtype) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    ref = ssd(*[a.double().cpu() for a in args], **{k: (v.double().cpu() if isinstance(v, torch.Tensor) else v)
                                                    for k, v in kwargs.items()}, impl="naive")
    tol = 1e-12 if dtype == F64 else tolerance(dtype)
    for Q in (1, 3, 16, 37, 64, 100):
        kwargs["chunk_size"] = Q
        y, hT = ssd(*args, **kwargs, impl=impl)
        assert rel_error(y, ref[0]) < tol and rel_error(hT, ref[1]) < tol, f"chunk_size={Q}"


def test_ssd_length_one_is_one_step(gen):
    (x, dt, A, B, C), _ = make(2, 1, 3, 2, 1, 4, gen)
    expected = dt[:, 0, :, None] * x[:, 0] * (B[:, 0] * C[:, 0]).sum(-1)[:, :, None].expand(2, 3, 1)  # h_0 C_0
    for impl in ("naive", "quadratic", "vectorized", "triton"):
        kind, device = (F64, "cpu") if impl != "triton" else (torch.float32, DEVICE)
        y = ssd(*(a.to(device, kind) for a in (x, dt, A, B, C)), chunk_size=64, impl=impl)
        assert rel_error(y[:, 0], expected) < tolerance(kind)


def test_ssd_groups_equal_repeated_heads(gen):
    """G groups of B, C = each head's own copy of its group (G = H)."""
    (x, dt, A, B, C), _ = make(2, 30, 6, 2, 3, 4, gen)
    Bh, Ch = B.repeat_interleave(2, dim=2), C.repeat_interleave(2, dim=2)  # head h reads group h // 2
    for impl in ("naive", "quadratic", "vectorized"):
        assert rel_error(ssd(x, dt, A, B, C, impl=impl), ssd(x, dt, A, Bh, Ch, impl=impl)) < 1e-12


def test_ssd_D_z_and_dt_transform(gen):
    """D (H,) = D (H, P) with equal columns; z gates with SiLU; dt_bias and softplus act on Δ."""
    args, _ = make(2, 25, 3, 4, 1, 5, gen)
    x, dt, A, B, C = args
    D = torch.randn(3, generator=gen, dtype=F64)
    z = torch.randn(2, 25, 3, 4, generator=gen, dtype=F64)
    bias = torch.randn(3, generator=gen, dtype=F64)
    for impl in ("naive", "quadratic", "vectorized"):
        y = ssd(*args, impl=impl)
        assert rel_error(ssd(*args, D=D, impl=impl), ssd(*args, D=D[:, None].expand(3, 4), impl=impl)) < 1e-14
        assert rel_error(ssd(*args, D=D, impl=impl), y + D[:, None] * x) < 1e-14
        assert rel_error(ssd(*args, z=z, impl=impl), y * F.silu(z)) < 1e-14
        raw = torch.randn(2, 25, 3, generator=gen, dtype=F64)
        got = ssd(x, raw, A, B, C, dt_bias=bias, dt_softplus=True, impl=impl)
        assert rel_error(got, ssd(x, F.softplus(raw + bias), A, B, C, impl=impl)) < 1e-14


@pytest.mark.parametrize("impl", ["naive", "quadratic", "vectorized", "triton"])
def test_ssd_two_halves_equal_the_whole(impl, gen):
    """Run [0, 20) then [20, 45) from the first half's final state: the same as one run."""
    dtype, device = (torch.float32, DEVICE) if impl == "triton" else (F64, "cpu")
    args, kw = make(2, 45, 2, 3, 1, 4, gen, D="h", h0=True)
    args = [a.to(device, dtype) for a in args]
    h0 = kw["initial_states"].to(device, dtype)
    x, dt, A, B, C = args
    whole, h_end = ssd(*args, initial_states=h0, return_final_states=True, impl=impl, chunk_size=16)
    y1, h_mid = ssd(x[:, :20], dt[:, :20], A, B[:, :20], C[:, :20], initial_states=h0, return_final_states=True,
                    impl=impl, chunk_size=16)
    y2, h_end2 = ssd(x[:, 20:], dt[:, 20:], A, B[:, 20:], C[:, 20:], initial_states=h_mid, return_final_states=True,
                     impl=impl, chunk_size=16)
    tol = 1e-12 if dtype == F64 else tolerance(dtype)
    assert rel_error(torch.cat([y1, y2], dim=1), whole) < tol
    assert rel_error(h_end2, h_end) < tol


def test_ssd_steps_rebuild_the_output(gen):
    """The four exported steps of the chunked algorithm, put together by hand, give the naive output."""
    (x, dt, A, B, C), _ = make(1, 32, 2, 3, 2, 4, gen)
    Q = 8
    xc, dtc, Bc, Cc = (t.unflatten(1, (4, Q)) for t in (x, dt, B, C))  # (b, c, Q, ...)
    a = (dtc * A).permute(0, 3, 1, 2)  # (b, H, c, Q)
    dtx = dtc[..., None] * xc
    states_in, final = ssd_state_passing(ssd_chunk_states(Bc, a, dtx), a.sum(-1))
    y = ssd_diagonal_blocks(Cc, Bc, a, dtx) + ssd_off_diagonal(Cc, a, states_in)
    ref, ref_final = ssd(x, dt, A, B, C, impl="naive", return_final_states=True)
    assert rel_error(y.flatten(1, 2), ref) < 1e-12 and rel_error(final, ref_final) < 1e-12
    # the mask is 1-semiseparable: lower triangular, ones on the diagonal, M[t, s] = M[t, r] M[r, s]
    M = ssd_mask(dt, A)[0, 0]
    assert torch.equal(M.triu(1), torch.zeros_like(M)) and torch.allclose(M.diagonal(), torch.ones(32, dtype=F64))
    assert abs(M[20, 3] - M[20, 11] * M[11, 3]) < 1e-14


def test_ssd_equals_selective_scan_with_a_shared_scalar_decay(gen):
    """Mamba-2 is Mamba-1 with A_h broadcast over (P, N) and B, C shared by the head's channels."""
    selective = pytest.importorskip("ssm_edu.selective")
    (x, dt, A, B, C), _ = make(2, 20, 3, 2, 1, 4, gen)
    y = ssd(x, dt, A, B, C, impl="naive")
    u = x.flatten(2, 3).transpose(1, 2)  # (b, H P, L)
    delta = dt.repeat_interleave(2, dim=2).transpose(1, 2)
    A1 = A.repeat_interleave(2)[:, None].expand(6, 4)  # (H P, N)
    y1 = selective.selective_scan(u, delta, A1, B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1), impl="naive")
    assert rel_error(y1.transpose(1, 2).unflatten(2, (3, 2)), y) < 1e-12


# ---------------------------------------------------------------- segment sums


def test_segsum_values_and_the_unstable_version(gen):
    a = -torch.rand(2, 6, generator=gen, dtype=F64)
    s = segsum(a)
    assert abs(s[1, 4, 1] - a[1, 2:5].sum()) < 1e-14 and s[1, 2, 2] == 0 and s[0, 1, 3] == -torch.inf
    assert torch.equal(torch.exp(s).triu(1), torch.zeros(2, 6, 6, dtype=F64))
    assert rel_error(torch.exp(segsum_unstable(a)), torch.exp(s)) < 1e-14
    # float32, long sequence: the difference of long prefix sums cancels, the masked cumsum does not
    a = -torch.rand(2000, generator=gen, dtype=F64)
    ref = torch.exp(segsum(a))
    good = rel_error(torch.exp(segsum(a.float())), ref)
    bad = rel_error(torch.exp(segsum_unstable(a.float())), ref)
    assert good < 1e-6 and bad > 1e-5 and bad > 20 * good, (good, bad)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("impl", ["naive", "quadratic", "vectorized"])
def test_ssd_gradcheck(impl, gen):
    args, kw = make(1, 6, 2, 2, 1, 2, gen, D="hp", z=True, bias=True, softplus=True, h0=True, final=True, chunk=4)
    names = ["D", "z", "dt_bias", "initial_states"]
    tensors = [t.requires_grad_() for t in (*args, *(kw.pop(n) for n in names))]

    def f(x, dt, A, B, C, D, z, bias, h0):
        return ssd(x, dt, A, B, C, D=D, z=z, dt_bias=bias, initial_states=h0, impl=impl, **kw)

    assert torch.autograd.gradcheck(f, tensors)


def _grads(impl, dtype, device, args, kw):
    def leaf(t):
        return t.detach().to(device, dtype).clone().requires_grad_()

    tensors = {k: leaf(v) for k, v in kw.items() if isinstance(v, torch.Tensor)}
    xs = [leaf(a) for a in args]
    rest = {k: v for k, v in kw.items() if not isinstance(v, torch.Tensor)}
    y, hT = ssd(*xs, **tensors, **rest, impl=impl)
    wy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=F64).to(device, dtype)
    wh = torch.randn(hT.shape, generator=torch.Generator().manual_seed(6), dtype=F64).to(device, dtype)
    ((y * wy).sum() + (hT * wh).sum()).backward()
    return [t.grad for t in (*xs, *tensors.values())]


def test_ssd_gradients_match_across_impls(gen):
    """Every impl's gradients (through y and the final state) equal naive's in float64; triton's in float32."""
    args, kw = make(2, 21, 2, 3, 1, 4, gen, D="h", z=True, bias=True, softplus=True, h0=True, final=True, chunk=8)
    ref = _grads("naive", F64, "cpu", args, kw)
    for impl in ("quadratic", "vectorized"):
        for g, r in zip(_grads(impl, F64, "cpu", args, kw), ref):
            assert rel_error(g, r) < 1e-10, impl
    for g, r in zip(_grads("triton", torch.float32, DEVICE, args, kw), ref):
        assert rel_error(g, r) < 1e-5, "triton"


# ---------------------------------------------------------------- the Triton kernel

TRITON_SHAPES = SHAPES + [(2, 40, 2, 16, 1, 16, 32)]
GPU_SHAPES = [(2, 1000, 8, 64, 1, 128, 64), (1, 4097, 4, 64, 2, 64, 64), (3, 300, 6, 48, 3, 40, 256),
              (1, 256, 2, 128, 1, 256, 64)]
if ON_GPU:  # 40 to 68 s each in the GPU test phase of 2026-12-07: started first there
    TRITON_SHAPES += [pytest.param(s, marks=pytest.mark.heavy) for s in GPU_SHAPES]
TRITON_DTYPES = [torch.float32] + ([torch.bfloat16, torch.float16] if ON_GPU else [])


@pytest.mark.parametrize("dtype", TRITON_DTYPES, ids=str)
@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=str)
@pytest.mark.parametrize("options", [OPTIONS[0], OPTIONS[-1]], ids=["plain", "all"])
def test_ssd_triton(shape, options, dtype, gen):
    """Against naive in float64 on the same (rounded) inputs: odd L, batch 1, L = 1, groups, every option."""
    *dims, chunk = shape
    args, kw = make(*dims, gen, chunk=chunk, **options)
    args = [a.to(dtype) for a in args]
    kw = {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    # float64 reference: the loop at the sizes that also run on a CPU, the chunked form on the device at the
    # GPU's (test_ssd_tiers_agree: it equals the loop to 1e-10 in float64, every option): the loop of the
    # L = 300 case ran 39-68 s in the GPU phase of 2026-12-07 beside 11 workers (0.05 s on a free core)
    small = dims[1] <= 65
    where = "cpu" if small else DEVICE
    ref = ssd(*[a.to(where, F64) for a in args],
              **{k: (v.to(where, F64) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()},
              impl="naive" if small else "vectorized")
    out = ssd(*[a.to(DEVICE) for a in args], **{k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v)
                                                for k, v in kw.items()}, impl="triton")
    for o, r in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
        assert o.dtype == dtype and o.shape == r.shape and o.device.type == DEVICE.type
        err = rel_error(o, r)
        assert err < tolerance(dtype), f"relative error {err:.3g}"


@pytest.mark.parametrize("n_seg,final", [(2, True), (3, False), (7, True)])
def test_ssd_triton_segments(n_seg, final, gen):
    """Splitting L into segments (the launcher does it when batch x heads cannot fill the GPU) changes nothing."""
    from ssm_edu.kernels.ssd import ssd_fwd

    args, kw = make(2, 100, 2, 3, 1, 4, gen, D="h", z=True, bias=True, softplus=True, h0=True, chunk=16)
    kw.update(return_final_states=True)
    ref = ssd(*args, **kw, impl="naive")
    kw = {k: (v.float().to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    y, hT = ssd_fwd(*[a.float().to(DEVICE) for a in args], **{**kw, "return_final_states": final}, n_seg=n_seg)
    assert rel_error(y, ref[0]) < 1e-5
    assert (rel_error(hT, ref[1]) < 1e-5) if final else hT is None


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA")
def test_ssd_triton_mixed_dtypes_on_gpu(gen):
    """Mamba-2 keeps A, D, dt_bias (and often dt) in float32 with bfloat16 activations."""
    args, kw = make(2, 300, 8, 64, 2, 64, gen, D="h", z=True, bias=True, softplus=True, h0=True, final=True, chunk=64)
    x, dt, A, B, C = args
    low = [x.bfloat16(), dt.float(), A.float(), B.bfloat16(), C.bfloat16()]
    lkw = {k: (v.float() if k in ("D", "dt_bias", "initial_states") else v.bfloat16()) if isinstance(v, torch.Tensor)
           else v for k, v in kw.items()}
    ref = ssd(*[a.double() for a in low], **{k: (v.double() if isinstance(v, torch.Tensor) else v)
                                             for k, v in lkw.items()}, impl="vectorized")
    out = ssd(*[a.cuda() for a in low], **{k: (v.cuda() if isinstance(v, torch.Tensor) else v)
                                           for k, v in lkw.items()}, impl="triton")
    assert out[0].dtype == torch.bfloat16
    assert rel_error(out[0], ref[0]) < 2e-2 and rel_error(out[1], ref[1]) < 2e-2


def test_ssd_auto_and_float64():
    x = torch.zeros(1, 4, 2, 3, dtype=F64, device=DEVICE)
    args = (x, torch.ones(1, 4, 2, dtype=F64, device=DEVICE), -torch.ones(2, dtype=F64, device=DEVICE),
            torch.zeros(1, 4, 1, 5, dtype=F64, device=DEVICE), torch.zeros(1, 4, 1, 5, dtype=F64, device=DEVICE))
    assert ssd(*args).dtype == F64  # auto never sends float64 to the kernel
    with pytest.raises(ValueError, match="use impl='vectorized' for float64"):
        ssd(*args, impl="triton")
    from ssm_edu._dispatch import dispatch

    fn = dispatch("ssd", "auto", (x,), naive=print, vectorized=len, triton="ssd:ssd_triton")
    assert (fn.__name__ == "ssd_triton") == ON_GPU


# ---------------------------------------------------------------- bad input


def _ok():
    return dict(x=torch.zeros(2, 8, 4, 3), dt=torch.ones(2, 8, 4), A=-torch.ones(4),
                B=torch.zeros(2, 8, 2, 5), C=torch.zeros(2, 8, 2, 5))


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(x=torch.zeros(2, 8, 4)), r"x must have shape \(batch, L, H, P\); got \(2, 8, 4\)"),
        (dict(dt=torch.ones(2, 7, 4)), r"dt must have shape \(batch, L, H\) = \(2, 8, 4\); got \(2, 7, 4\)"),
        (dict(A=-torch.ones(4, 1)), r"A must have shape \(H,\) = \(4,\); got \(4, 1\)"),
        (dict(B=torch.zeros(2, 8, 3, 5), C=torch.zeros(2, 8, 3, 5)), r"H = 4 must be a multiple of the number of groups G = 3"),
        (dict(C=torch.zeros(2, 8, 2, 6)), r"C must have shape \(batch, L, G, N\) = \(2, 8, 2, 5\); got \(2, 8, 2, 6\)"),
        (dict(D=torch.ones(3)), r"D must have shape \(H,\) = \(4,\) or \(H, P\) = \(4, 3\); got \(3,\)"),
        (dict(z=torch.zeros(2, 8, 4, 2)), r"z must have shape \(batch, L, H, P\) = \(2, 8, 4, 3\); got \(2, 8, 4, 2\)"),
        (dict(dt_bias=torch.zeros(2)), r"dt_bias must have shape \(H,\) = \(4,\); got \(2,\)"),
        (dict(initial_states=torch.zeros(2, 4, 3, 4)), r"initial_states must have shape \(batch, H, P, N\) = \(2, 4, 3, 5\)"),
        (dict(chunk_size=0), r"chunk_size must be an int >= 1; got 0"),
        (dict(x=torch.zeros(2, 0, 4, 3), dt=torch.ones(2, 0, 4), B=torch.zeros(2, 0, 2, 5), C=torch.zeros(2, 0, 2, 5)),
         r"L must be >= 1; got L = 0"),
        (dict(A=-torch.ones(4, dtype=torch.int64)), r"A has dtype int64"),
        (dict(C=torch.zeros(2, 8, 2, 5, device="meta")), r"one device"),
        (dict(impl="loop"), r"unknown impl='loop'; valid: 'auto', 'naive', 'quadratic', 'vectorized', 'triton'"),
    ],
)
def test_ssd_bad_input(change, match):
    kwargs = {**_ok(), **change}
    with pytest.raises(ValueError, match=match):
        ssd(**kwargs)
