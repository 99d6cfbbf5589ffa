"""selective_scan (chapter 7): the tiers, the chunked form, an LTI oracle, the
Triton kernel (interpreter on CPU, compiled on a GPU) forward and backward,
gradients, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ssm_edu
from ssm_edu import causal_conv, selective_scan, selective_scan_chunked
from ssm_edu.numerics import rel_error, tolerance
from tiers import assert_tiers_agree

DEVICE = ssm_edu.default_device()
ON_GPU = DEVICE.type == "cuda"
FAST = ["vectorized", "chunked"]
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def inputs(batch, D, L, N, G=None, gen=None, options=True, dtype=torch.float64):
    """Random inputs of a stable selective SSM: A < 0, moderate steps. G=None: B, C (b, N, L)."""
    gen = gen or torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    u, delta = r(batch, D, L), 0.5 * r(batch, D, L)
    A = -(0.5 + torch.rand(D, N, generator=gen, dtype=torch.float64))
    grouped = (batch,) if G is None else (batch, G)
    B, C = r(*grouped, N, L), r(*grouped, N, L)
    args = [u, delta.abs() if not options else delta, A, B, C]
    kw = dict(D=r(D), z=r(batch, D, L), delta_bias=0.3 * r(D), delta_softplus=True) if options else {}
    return [x.to(dtype) for x in args], {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def on_device(args, kw):
    """``inputs``' tensors moved to DEVICE (the kernels' device): (args, kw)."""
    kwd = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    return [x.to(DEVICE) for x in args], kwd


# (batch, D, L, N, G): L = 1, odd L, batch 1, groups, L not a multiple of the blocks
CASES = [(1, 1, 1, 1, None), (1, 3, 7, 4, None), (2, 4, 13, 3, 2), (2, 6, 33, 4, 3), (1, 2, 100, 16, None)]


@pytest.mark.parametrize("batch,D,L,N,G", CASES)
@pytest.mark.parametrize("options", [False, True])
def test_selective_scan_tiers(batch, D, L, N, G, options):
    def make(dtype, gen):
        args, kw = inputs(batch, D, L, N, G, gen, options)
        return args, {**kw, "return_last_state": True}

    assert_tiers_agree(selective_scan, make, FAST, dtypes=(torch.float32, torch.bfloat16), label=f"{batch, D, L, N, G}")


@pytest.mark.parametrize("chunk", [1, 4, 5, 64])
def test_chunked_does_not_depend_on_the_chunk(chunk):
    args, kw = inputs(2, 4, 37, 3, 2)
    y, h = selective_scan(*args, **kw, return_last_state=True, impl="naive")
    yc, hc = selective_scan_chunked(*args, **kw, return_last_state=True, chunk=chunk)
    assert rel_error(yc, y) < 1e-13 and rel_error(hc, h) < 1e-13


def test_ungrouped_equals_one_group_and_groups_are_read_per_channel():
    args, kw = inputs(2, 6, 9, 3)
    u, delta, A, B, C = args
    y = selective_scan(*args, **kw, impl="naive")
    assert rel_error(selective_scan(u, delta, A, B[:, None], C[:, None], **kw, impl="naive"), y) < 1e-15
    # three groups with the same B, C are one group; changing group 1 changes channels 2-3 only
    B3, C3 = B[:, None].repeat(1, 3, 1, 1), C[:, None].repeat(1, 3, 1, 1)
    assert rel_error(selective_scan(u, delta, A, B3, C3, **kw, impl="vectorized"), y) < 1e-14
    B3[:, 1] += 1.0
    diff = (selective_scan(u, delta, A, B3, C3, **kw, impl="naive") - y).abs().amax(dim=(0, 2))
    assert torch.equal(diff > 1e-9, torch.tensor([False, False, True, True, False, False]))


def test_lti_reduction_is_a_convolution():
    """Oracle: with Δ, B, C constant in time the scan is a causal convolution,
    K_l = Σ_n C_n Δ B_n e^{l Δ A_n} (exponential-Euler B̄ = Δ B)."""
    gen = torch.Generator().manual_seed(3)
    batch, D, L, N = 2, 3, 40, 5
    u = torch.randn(batch, D, L, generator=gen, dtype=torch.float64)
    dt = 0.1 + torch.rand(D, generator=gen, dtype=torch.float64)
    A = -(0.2 + torch.rand(D, N, generator=gen, dtype=torch.float64))
    Bn, Cn = torch.randn(N, generator=gen, dtype=torch.float64), torch.randn(N, generator=gen, dtype=torch.float64)
    l = torch.arange(L, dtype=torch.float64)
    K = (Cn * dt[:, None] * Bn * torch.exp(l[:, None, None] * dt[:, None] * A)).sum(-1).T  # (D, L)
    ref = causal_conv(u, K, impl="naive")
    delta = dt[None, :, None].expand(batch, D, L)
    Bt, Ct = Bn[None, :, None].expand(batch, N, L), Cn[None, :, None].expand(batch, N, L)
    for impl in ["naive", *FAST]:
        assert rel_error(selective_scan(u, delta, A, Bt, Ct, impl=impl), ref) < 1e-12


def test_options_match_their_definitions():
    """D, z, delta_bias and softplus, each checked against the plain scan."""
    args, kw = inputs(1, 3, 8, 2)
    u, delta, A, B, C = args
    D, z, bias = kw["D"], kw["z"], kw["delta_bias"]
    plain = selective_scan(u, delta.abs(), A, B, C, impl="naive")
    assert rel_error(selective_scan(u, delta.abs(), A, B, C, D=D, impl="vectorized"), plain + D[:, None] * u) < 1e-14
    gated = selective_scan(u, delta.abs(), A, B, C, z=z, impl="vectorized")
    assert rel_error(gated, plain * z * torch.sigmoid(z)) < 1e-14
    soft = torch.nn.functional.softplus(delta + bias[:, None])
    ref = selective_scan(u, soft, A, B, C, impl="naive")
    assert rel_error(selective_scan(*args, delta_bias=bias, delta_softplus=True, impl="vectorized"), ref) < 1e-14


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 2), D=st.integers(1, 4), L=st.integers(1, 40), N=st.integers(1, 5),
       seed=st.integers(0, 2**16), grouped=st.booleans())
def test_selective_scan_property(batch, D, L, N, seed, grouped):
    G = D if grouped else None
    args, kw = inputs(batch, D, L, N, G, torch.Generator().manual_seed(seed))
    y, h = selective_scan(*args, **kw, return_last_state=True, impl="naive")
    for impl in FAST:
        y2, h2 = selective_scan(*args, **kw, return_last_state=True, impl=impl)
        assert rel_error(y2, y) < 1e-12 and rel_error(h2, h) < 1e-12


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("impl", ["naive", *FAST])
def test_selective_scan_gradcheck(impl):
    args, kw = inputs(1, 2, 5, 2, 2)
    tensors = [*args, kw["D"], kw["z"], kw["delta_bias"]]
    tensors = [x.detach().requires_grad_() for x in tensors]

    def f(u, delta, A, B, C, D, z, bias):
        y, h = selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,
                              return_last_state=True, impl=impl)
        return y, h

    assert torch.autograd.gradcheck(f, tensors)


def _grads(impl, args, kw, dtype, device, gen_seed=5, weights_in=torch.float64):
    """Gradients of a random linear function of (y, last_state) w.r.t. every input.

    ``weights_in``: the dtype the function's random weights are rounded to first.
    """
    leaves = [x.detach().to(device, dtype).requires_grad_() for x in args]
    kwl = {k: (v.detach().to(device, dtype).requires_grad_() if isinstance(v, torch.Tensor) else v)
           for k, v in kw.items()}
    y, h = selective_scan(*leaves, **kwl, return_last_state=True, impl=impl)
    gen = torch.Generator().manual_seed(gen_seed)
    wy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(weights_in).to(device, dtype)
    wh = torch.randn(h.shape, generator=gen, dtype=torch.float64).to(weights_in).to(device, dtype)
    ((y * wy).sum() + (h * wh).sum()).backward()
    return [x.grad for x in leaves] + [kwl[k].grad for k in ("D", "z", "delta_bias") if k in kwl]


@pytest.mark.parametrize("batch,D,L,N,G", [(1, 3, 7, 4, None), (2, 4, 13, 3, 2)])
def test_fast_gradients_match_naive(batch, D, L, N, G):
    args, kw = inputs(batch, D, L, N, G)
    ref = _grads("naive", args, kw, torch.float64, "cpu")
    for impl in FAST:
        for name, g, r in zip(NAMES, _grads(impl, args, kw, torch.float64, "cpu"), ref):
            assert rel_error(g, r) < 1e-12, f"{impl} d{name}"


# ---------------------------------------------------------------- the Triton kernel

# Interpreter: a few thousand scan elements at most (its associative_scan loops in Python);
# its BLOCK_L is 8, so L = 13 and 17 end in a partial block and L = 8 in a full one.
TRITON_CASES = [(c, torch.float32) for c in [(1, 1, 1, 1, None), (1, 3, 7, 4, None), (2, 4, 13, 3, 2), (1, 6, 17, 2, 3),
                                              (1, 2, 8, 5, None)]]
if ON_GPU:  # compiled: long sequences, many channels, N up to 64, half precision
    TRITON_CASES += [(c, dtype) for c in [(2, 64, 1000, 16, None), (3, 96, 257, 16, 3), (1, 8, 4097, 64, 2),
                                          (1, 300, 300, 7, None)] for dtype in (torch.float32, torch.bfloat16)]
    TRITON_CASES += [((2, 64, 1000, 16, None), torch.float16)]
VARIANTS = ["nloop", "rows", "nsplit"]


@pytest.mark.parametrize("case,dtype", TRITON_CASES, ids=str)
@pytest.mark.parametrize("options", [False, True])
def test_selective_scan_triton(case, dtype, options):
    """Against the naive version in float64 on the same (rounded) inputs."""
    batch, D, L, N, G = case
    args, kw = inputs(batch, D, L, N, G, options=options, dtype=dtype)
    ref_y, ref_h = selective_scan(*[x.double() for x in args], **{k: (v.double() if isinstance(v, torch.Tensor) else v)
                                  for k, v in kw.items()}, return_last_state=True, impl="naive")
    dev, kwd = on_device(args, kw)
    y, h = selective_scan(*dev, **kwd, return_last_state=True, impl="triton")
    assert y.dtype == dtype and h.dtype == dtype and y.shape == ref_y.shape and h.shape == ref_h.shape
    assert y.device.type == DEVICE.type
    assert rel_error(y, ref_y) < tolerance(dtype), f"y: {rel_error(y, ref_y):.3g}"
    assert rel_error(h, ref_h) < tolerance(dtype), f"last state: {rel_error(h, ref_h):.3g}"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("block_l", [1, 4, 16])
def test_selective_scan_triton_variants_and_blocks(variant, block_l):
    """Both forms of the kernel and any BLOCK_L give the same result (incl. BLOCK_L > L)."""
    from ssm_edu.kernels.selective import selective_scan_fwd

    args, kw = inputs(1, 3, 11, 3, 3, dtype=torch.float32)
    ref_y, ref_h = selective_scan(*args, **kw, return_last_state=True, impl="naive")
    dev, kwd = on_device(args, kw)
    y, h, _, _ = selective_scan_fwd(*dev, **kwd, variant=variant, block_l=block_l, block_d=2)
    assert rel_error(y, ref_y) < 1e-5 and rel_error(h, ref_h) < 1e-5


# (variant, knobs): software prefetch of the next block (1: u, Δ, z; 2: also B, C), threads along N,
# and the mask-free path (even=True needs L % BLOCK_L == 0, D % BLOCK_D == 0 and BLOCK_N = N)
KNOBS = [("rows", dict(prefetch=1)), ("rows", dict(prefetch=2, block_l=4)), ("nsplit", dict(tn=2, prefetch=0)),
         ("nsplit", dict(tn=2, prefetch=1)),
         ("nsplit", dict(tn=4, prefetch=1)), ("nsplit", dict(tn=4, prefetch=2, block_l=4)), ("nsplit", dict(tn=1)),
         # per-(d, t) work once (share), the log-free softplus, exp2 by a polynomial for every k-th mode
         ("nsplit", dict(tn=2, share=True)), ("nsplit", dict(tn=4, share=2, softplus_poly=True, prefetch=2)),
         ("nsplit", dict(tn=1, exp_poly=1)), ("nsplit", dict(tn=2, exp_poly=2, share=True, softplus_poly=True)),
         ("nsplit", dict(tn=1, exp_poly=4, share=2)), ("nsplit", dict(tn=2, share=2, num_warps=2)),
         ("rows", dict(softplus_poly=True)),
         # segments of the sequence side by side (two passes): 3 segments of 4 steps at L = 11
         ("nsplit", dict(tn=2, segments=3, block_l=2)), ("nsplit", dict(tn=2, share=2, segments=2, block_l=4))]


@pytest.mark.parametrize("segments", [1, 2])
def test_selective_scan_triton_many_modes(segments):
    """More than 32 modes: the GPU's forward default there, "nsplit" with 4 modes per thread (N = 64: 16 threads
    per channel), on odd L and N, with and without segments."""
    from ssm_edu.kernels.selective import selective_scan_fwd

    for case in [(1, 3, 37, 64, 3), (2, 4, 20, 33, 2)]:
        args, kw = inputs(*case, dtype=torch.float32)
        ref_y, ref_h = selective_scan(*args, **kw, return_last_state=True, impl="naive")
        dev, kwd = on_device(args, kw)
        y, h, _, meta = selective_scan_fwd(*dev, **kwd, variant="nsplit", tn=16, segments=segments)
        assert meta["TN"] == 16 and meta.get("SEGS", 1) == segments
        assert rel_error(y, ref_y) < 1e-5 and rel_error(h, ref_h) < 1e-5, (case, rel_error(y, ref_y))


@pytest.mark.parametrize("variant,knobs", KNOBS, ids=str)
@pytest.mark.parametrize("case", [(1, 3, 11, 3, 3), (2, 4, 8, 4, None), (1, 2, 1, 1, None)], ids=str)
def test_selective_scan_triton_knobs(variant, knobs, case):
    """Every variant and knob: groups, D, z, bias, softplus, last state, odd L, L = 1, batch 1; even and masked."""
    from ssm_edu.kernels.selective import selective_scan_fwd

    batch, D, L, N, G = case
    args, kw = inputs(batch, D, L, N, G, dtype=torch.float32)
    ref_y, ref_h = selective_scan(*args, **kw, return_last_state=True, impl="naive")
    dev, kwd = on_device(args, kw)
    if knobs.get("exp_poly", 0) > 1 and (triton_next_pow2(N) // min(knobs["tn"], triton_next_pow2(N))) % knobs["exp_poly"]:
        with pytest.raises(ValueError, match="exp_poly"):  # fewer modes per thread than the polynomial's period
            selective_scan_fwd(*dev, **kwd, variant=variant, **knobs)
        return
    y, h, _, meta = selective_scan_fwd(*dev, **kwd, variant=variant, block_d=2, even=False, **knobs)
    assert not meta["EVEN"]
    assert rel_error(y, ref_y) < 1e-5 and rel_error(h, ref_h) < 1e-5, (meta, rel_error(y, ref_y))
    # the mask-free path where its blocks tile L and D (BLOCK_L is the launcher's: 8 in the interpreter for
    # L >= 8, 4 or 8 compiled; at L = 1 only the interpreter's BLOCK_L = 1 does)
    if L % meta["BLOCK_L"] == 0 and N in (1, 4):
        y, h, _, meta = selective_scan_fwd(*dev, **kwd, variant=variant, block_d=D, even=True, **knobs)
        assert meta["EVEN"]
        assert rel_error(y, ref_y) < 1e-5 and rel_error(h, ref_h) < 1e-5, (meta, rel_error(y, ref_y))


@pytest.mark.parametrize("variant", ["rows", "nsplit"])
def test_even_is_refused_where_the_blocks_do_not_tile(variant):
    """even=True where L, D or N do not fit the blocks would read and write past them: a ValueError instead."""
    from ssm_edu.kernels.selective import selective_scan_fwd

    args, kw = inputs(1, 4, 6, 4, dtype=torch.float32)
    dev = [x.to(DEVICE) for x in args]
    with pytest.raises(ValueError, match=r"even=True needs L % BLOCK_L == 0.*got L=6, BLOCK_L=4"):
        selective_scan_fwd(*dev, variant=variant, block_l=4, block_d=4, even=True)
    with pytest.raises(ValueError, match=r"even=True needs .*D/G=4, BLOCK_D=8"):
        selective_scan_fwd(*dev, variant=variant, block_l=2, block_d=8, even=True)
    args, kw = inputs(1, 4, 8, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"even=True needs .*N=3"):
        selective_scan_fwd(*[x.to(DEVICE) for x in args], variant=variant, block_l=4, block_d=4, even=True)


def triton_next_pow2(n):
    return 1 << (n - 1).bit_length()


def test_fast_math_polynomials():
    """The kernel's FMA-only 2^x (x < -126 gives 0) and log-free softplus against float64 (stated bounds).

    Compiled, softplus' w = e^-|x| comes from ex2.approx of the product -|x| log2 e rounded to float32: up to
    7.3e-8 |x| more relative error in w, which is softplus' relative error for x << 0 (1.7e-6 predicted at
    x = -27.6); the interpreter's exp is exact to half an ulp there."""
    from ssm_edu.kernels.selective import fast_math

    x = torch.cat([torch.linspace(-140.0, 0.0, 20011), torch.linspace(-1.0, 1.0, 4001), torch.tensor([0.0, -126.0])])
    e, _ = fast_math(x.to(DEVICE))
    e, xd = e.cpu().double(), x.double()
    live = xd >= -126.0
    rel = ((e[live] - torch.exp2(xd[live])) / torch.exp2(xd[live])).abs().max().item()
    assert rel < 2e-7, rel
    assert (e[~live] == 0).all() and e[x == 0.0].eq(1.0).all()
    x = torch.cat([torch.linspace(-30.0, 30.0, 24001), torch.tensor([-1e-6, 0.0, 1e-6, 80.0])])
    _, sp = fast_math(x.to(DEVICE))
    ref = torch.nn.functional.softplus(x.double())
    rel = ((sp.cpu().double() - ref) / ref).abs()
    bound = 5e-7 + 1.4e-7 * (-x.double()).clamp(min=0)  # the series and rounding; exp's argument (compiled)
    assert (rel < bound).all(), (rel.max().item(), x[(rel / bound).argmax()].item())


def test_selective_scan_triton_bad_variant():
    from ssm_edu.kernels.selective import selective_scan_fwd

    args, kw = inputs(1, 2, 4, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"variant must be one of \['nloop', 'nsplit', 'rows'\]; got 'cols'"):
        selective_scan_fwd(*[x.to(DEVICE) for x in args], variant="cols")


def test_selective_scan_triton_non_contiguous():
    """Any strides: time-major storage, a group slice of B, every other channel of C."""
    gen = torch.Generator().manual_seed(7)
    args, kw = inputs(2, 4, 9, 3, 2, gen, dtype=torch.float32)
    (u, delta, A, B, C), kwd = on_device(args, kw)
    ref = selective_scan(u, delta, A, B, C, **kwd, impl="naive")
    u_t = u.transpose(1, 2).contiguous().transpose(1, 2)  # (b, D, L) stored (b, L, D)
    B_big = torch.zeros(2, 2, 3, 2, 9, device=DEVICE)
    B_big[:, :, :, 1] = B  # B is a strided slice
    C_wide = torch.stack([C, torch.zeros_like(C)], dim=-1)[..., 0]  # stride 2 along L
    z_t = kwd["z"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not (u_t.is_contiguous() or B_big[:, :, :, 1].is_contiguous() or C_wide.is_contiguous())
    out = selective_scan(u_t, delta, A.t().contiguous().t(), B_big[:, :, :, 1], C_wide,
                         **{**kwd, "z": z_t, "D": torch.stack([kwd["D"], kwd["D"]], 1)[:, 0]}, impl="triton")
    assert rel_error(out, ref) < 1e-5


@pytest.mark.parametrize("batch,D,L,N,G", [(1, 3, 7, 4, None), (2, 4, 13, 3, 2)])
def test_selective_scan_triton_gradients(batch, D, L, N, G):
    """du, ddelta, dA, dB, dC, dD, dz, ddelta_bias (and through last_state) against naive float64."""
    args, kw = inputs(batch, D, L, N, G)
    ref = _grads("naive", args, kw, torch.float64, "cpu")
    got = _grads("triton", [x.float() for x in args], kw, torch.float32, DEVICE)
    for name, g, r in zip(NAMES, got, ref):
        assert g.dtype == torch.float32 and g.shape == r.shape, name
        assert rel_error(g, r) < 1e-5, f"d{name}: {rel_error(g, r):.3g}"


def test_selective_scan_triton_gradients_without_options():
    args, _ = inputs(1, 2, 10, 3, options=False)
    leaves = {}
    for impl, dtype, dev in (("naive", torch.float64, "cpu"), ("triton", torch.float32, DEVICE)):
        xs = [x.detach().to(dev, dtype).requires_grad_() for x in args]
        selective_scan(*xs, impl=impl).square().sum().backward()
        leaves[impl] = [x.grad for x in xs]
    for name, g, r in zip(NAMES, leaves["triton"], leaves["naive"]):
        assert rel_error(g, r) < 1e-5, f"d{name}"


@pytest.mark.heavy
@pytest.mark.skipif(not ON_GPU, reason="bfloat16 arithmetic needs a GPU (the interpreter computes in float32)")
def test_selective_scan_triton_bf16_gradients():
    """The float64 reference by the vectorized scan on the GPU (its float64 gradients equal the loop's:
    test_fast_gradients_match_naive; the loop took 1.1 s of a free core here)."""
    args, kw = inputs(2, 64, 600, 16, 2, dtype=torch.bfloat16)  # the reference sees the same rounded inputs
    ref = _grads("vectorized", args, kw, torch.float64, DEVICE, weights_in=torch.bfloat16)
    got = _grads("triton", args, kw, torch.bfloat16, DEVICE)
    for name, g, r in zip(NAMES, got, ref):
        assert g.dtype == torch.bfloat16 and rel_error(g, r) < 5e-2, f"d{name}: {rel_error(g, r):.3g}"


def test_selective_scan_triton_is_auto_on_gpu_only_below_float64():
    args, kw = inputs(1, 2, 5, 2)
    from ssm_edu._dispatch import dispatch

    fn = dispatch("selective_scan", "auto", [args[0].float().to(DEVICE)], naive=print, vectorized=len,
                  triton="selective:selective_scan_triton")
    assert (fn.__name__ == "selective_scan_triton") == ON_GPU
    dev = [x.to(DEVICE) for x in args]  # float64: auto computes in float64, not with the kernel
    assert rel_error(selective_scan(*dev), selective_scan(*args, impl="naive")) < 1e-13
    with pytest.raises(ValueError, match="impl='triton' computes in float32; got float64"):
        selective_scan(*dev, impl="triton")


# ---------------------------------------------------------------- bad input

b, D, L, N = 2, 4, 8, 3
OK = dict(u=torch.zeros(b, D, L), delta=torch.zeros(b, D, L), A=torch.zeros(D, N), B=torch.zeros(b, N, L),
          C=torch.zeros(b, N, L))


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(u=torch.zeros(D, L)), r"u must have shape \(batch, D, L\); got \(4, 8\)"),
        (dict(delta=torch.zeros(b, D, L + 1)), r"delta must have shape \(batch, D, L\) = \(2, 4, 8\); got \(2, 4, 9\)"),
        (dict(A=torch.zeros(D + 1, N)), r"A must have shape \(D, N\) = \(4, N\); got \(5, 3\)"),
        (dict(B=torch.zeros(b, N + 1, L)), r"B must have shape \(batch, N, L\) = \(2, 3, 8\) or \(batch, G, N, L\) = \(2, G, 3, 8\); got \(2, 4, 8\)"),
        (dict(C=torch.zeros(b, 3, N, L)), r"the number of groups G of C must divide D = 4; got C of shape \(2, 3, 3, 8\)"),
        (dict(B=torch.zeros(b, 2, N, L), C=torch.zeros(b, 4, N, L)), r"C must have shape .*; got \(2, 4, 3, 8\)"),
        (dict(D=torch.zeros(D + 1)), r"D must have shape \(D,\) = \(4,\); got \(5,\)"),
        (dict(z=torch.zeros(b, D)), r"z must have shape \(batch, D, L\) = \(2, 4, 8\); got \(2, 4\)"),
        (dict(delta_bias=torch.zeros(1, D)), r"delta_bias must have shape \(D,\) = \(4,\); got \(1, 4\)"),
        (dict(u=torch.zeros(b, D, 0), delta=torch.zeros(b, D, 0), B=torch.zeros(b, N, 0), C=torch.zeros(b, N, 0)),
         r"L must be >= 1; got L = 0"),
        (dict(A=torch.zeros(D, N, dtype=torch.complex64)), r"A has dtype complex64"),
        (dict(u=torch.zeros(b, D, L, dtype=torch.int64)), r"u has dtype int64"),
        (dict(C=torch.zeros(b, N, L, device="meta")), r"one device"),
    ],
)
@pytest.mark.parametrize("impl", ["naive", "triton"])
def test_selective_scan_bad_input(change, match, impl):
    with pytest.raises(ValueError, match=match):
        selective_scan(**{**OK, **change}, impl=impl)


def test_selective_scan_bad_impl_and_chunk():
    with pytest.raises(ValueError, match=r"unknown impl='cuda'; valid: 'auto', 'naive', 'vectorized', 'chunked', 'triton'"):
        selective_scan(**OK, impl="cuda")
    with pytest.raises(ValueError, match=r"chunk must be an int >= 1; got 0"):
        selective_scan_chunked(**OK, chunk=0)
    with pytest.raises(ValueError, match=r"selective_scan_chunked: u must have shape"):
        selective_scan_chunked(**{**OK, "u": torch.zeros(3)})


def test_default_variant(monkeypatch):
    """On a GPU the forward takes "nsplit" (TN 2) only where it was measured: N = 16, no masks; training (the
    checkpoints for the backward pass) always takes "nsplit", with at most 8 modes per thread."""
    from ssm_edu.kernels import selective as k

    monkeypatch.setattr(k, "interpreting", lambda: False)
    assert k._default_variant(2048, 16, 2048, False, None) == ("nsplit", 2)
    for Dg, N, L in [(2048, 16, 2047), (2040, 16, 2048), (2048, 8, 2048)]:
        assert k._default_variant(Dg, N, L, False, None) == ("rows", None)
    for N, tn in [(16, 2), (8, 2), (64, 8), (1, 2)]:
        assert k._default_variant(2040, N, 2047, True, None) == ("nsplit", tn)
    variant, meta, _ = k._blocks(2048, 16, 2048, False, "nsplit", None, None, None, 2, None, 2, None)
    assert variant == "nsplit" and meta == dict(BLOCK_D=16, BLOCK_N=16, BLOCK_L=8, EVEN=True, PREFETCH=1, TN=2)
