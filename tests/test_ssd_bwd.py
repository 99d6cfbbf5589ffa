"""The Triton backward of ssd (kernels/ssd.py): every input's gradient against the float64 loop.

float32 gradients within API.md's 1e-5 of impl="naive" in float64 (the same rounded inputs),
bfloat16 within 2e-2 of the float32 ones; odd sizes (L not a multiple of the chunk, P and N not
powers of two, groups, batch 1, L = 1), every option, the launcher's knobs. On a CPU the kernels run
in Triton's interpreter at small sizes; on a GPU the same tests run compiled, with larger shapes.
"""

import pytest
import torch

import ssm_edu
from ssm_edu import rel_error, ssd
from ssm_edu.numerics import tolerance

DEVICE = ssm_edu.default_device()
ON_GPU = DEVICE.type == "cuda"
F64 = torch.float64
ALL = dict(D="hp", z=True, bias=True, softplus=True, h0=True, final=True)


def make(b, L, H, P, G, N, seed, D=None, z=False, bias=False, softplus=False, h0=False, final=False, chunk=16):
    """Float64 inputs (args, kwargs) of ssd: Δ > 0 (or raw values for softplus), A < 0."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=gen, dtype=F64)

    dt = r(b, L, H) - 1 if softplus else 0.05 + 0.5 * torch.rand(b, L, H, generator=gen, dtype=F64)
    A = -(0.2 + 2 * torch.rand(H, generator=gen, dtype=F64))
    args = [r(b, L, H, P), dt, A, r(b, L, G, N, scale=0.5), r(b, L, G, N, scale=0.5)]
    kw = dict(chunk_size=chunk, dt_softplus=softplus, return_final_states=final)
    if D:
        kw["D"] = r(H) if D == "h" else r(H, P)
    if z:
        kw["z"] = r(b, L, H, P)
    if bias:
        kw["dt_bias"] = r(H, scale=0.5)
    if h0:
        kw["initial_states"] = r(b, H, P, N)
    return args, kw


def grads(impl, dtype, args, kw, device="cpu", wrt=None, seed=5):
    """d(Σ w ⊙ y + Σ w' ⊙ h_final)/d(every tensor input) with fixed random weights, as float64 on the CPU."""
    names = ["x", "dt", "A", "B", "C"] + [k for k, v in kw.items() if isinstance(v, torch.Tensor)]
    values = list(args) + [v for v in kw.values() if isinstance(v, torch.Tensor)]
    leaves = {n: v.detach().to(device, dtype).clone().requires_grad_(wrt is None or n in wrt)
              for n, v in zip(names, values)}
    rest = {k: v for k, v in kw.items() if not isinstance(v, torch.Tensor)}
    out = ssd(*(leaves[n] for n in names[:5]), **{n: leaves[n] for n in names[5:]}, **rest, impl=impl)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=F64).to(device, dtype)).sum() for o in outs)
    loss.backward()
    for n, t in leaves.items():
        assert (t.grad is not None) == t.requires_grad, n
        if t.grad is not None:
            assert t.grad.dtype == t.dtype and t.grad.shape == t.shape, n
    return {n: t.grad.double().cpu() for n, t in leaves.items() if t.grad is not None}


def reference(args, kw, dtype):
    """float64 gradients on the inputs rounded to ``dtype``: the loop at the sizes that also run on a CPU (L <= 100),
    the chunked form, on the device, at the GPU's long ones. In float64 the chunked form's gradients are the
    loop's (tests/test_ssd.py: test_ssd_gradients_match_across_impls to 1e-10, every option; test_ssd_gradcheck
    against finite differences), and on the GPU they take well under a second where the loop's took 0.3 s of a
    free core at L = 300 and the chunked form's 6 s at L = 2^18 + 37 on the CPU."""
    low = [a.to(dtype).double() for a in args]
    low_kw = {k: (v.to(dtype).double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    if args[0].shape[1] <= 100:
        return grads("naive", F64, low, low_kw), low, low_kw
    return grads("vectorized", F64, low, low_kw, DEVICE), low, low_kw


def assert_close(got, ref, tol, label):
    for name in ref:
        err = rel_error(got[name], ref[name])
        assert err < tol, f"{label}: d{name} relative error {err:.3g} >= {tol}"


# (b, L, H, P, G, N, chunk, options): L = 1, L not a multiple of the chunk, batch 1, groups, P over one
# block of 32 head dims, odd P and N
CASES = [(1, 1, 1, 1, 1, 1, 16, ALL), (2, 37, 4, 5, 2, 6, 16, {}), (1, 50, 6, 17, 3, 20, 16, dict(D="h", z=True)),
         (2, 21, 2, 3, 1, 4, 8, ALL), (2, 45, 4, 40, 2, 20, 16, ALL)]
GPU_CASES = [(2, 1000, 8, 64, 1, 128, 64, ALL), (1, 4097, 4, 64, 2, 64, 64, {}), (3, 300, 6, 48, 3, 40, 256, ALL),
             (1, 256, 2, 128, 1, 256, 64, ALL)]
if ON_GPU:
    CASES += GPU_CASES


def heavy(case, *more):
    """The parameters of a case; the GPU's cases marked heavy (benchmarks/gpu_tests.py starts them first)."""
    if case in GPU_CASES:
        return pytest.param(case, *more, marks=pytest.mark.heavy)
    return (case, *more) if more else case


@pytest.mark.parametrize("case", [heavy(c) for c in CASES], ids=lambda c: str(c[:7]) + "-".join(c[7]))
def test_ssd_triton_gradients_float32(case):
    """float32 Triton gradients of x, dt, A, B, C, D, z, dt_bias, initial_states vs the float64 loop."""
    *dims, chunk, options = case
    args, kw = make(*dims, seed=sum(dims), chunk=chunk, **options)
    ref, low, low_kw = reference(args, kw, torch.float32)
    got = grads("triton", torch.float32, low, low_kw, DEVICE)
    assert set(got) == set(ref)
    assert_close(got, ref, tolerance(torch.float32), str(case[:7]))


@pytest.mark.heavy
@pytest.mark.skipif(not ON_GPU, reason="compiled only: the interpreter computes offsets in 64 bits")
def test_ssd_triton_gradients_past_int32_offsets():
    """b L H (b c) over 2^31: float32 takes chunks of Q = 32, so L = 2^18 + 37 with one head gives 2.15e9. The
    chunk kernel's second block of head dims (P = 32 in blocks of 16) addressed its part of dL/dΔ with that
    product in int32 and wrote outside the buffer (an illegal address at L = 65536, H = 24 on an H100)."""
    args, kw = make(1, (1 << 18) + 37, 1, 32, 1, 16, seed=4, chunk=64)
    ref, low, low_kw = reference(args, kw, torch.float32)
    got = grads("triton", torch.float32, low, low_kw, DEVICE)
    assert_close(got, ref, tolerance(torch.float32), "L = 2^18 + 37")


HALF = [(c, torch.bfloat16) for c in [CASES[3]] + CASES[5:]] + ([(CASES[5], torch.float16)] if ON_GPU else [])


@pytest.mark.parametrize("case,dtype", [heavy(*p) for p in HALF],
                         ids=lambda c: str(c[:7]) if isinstance(c, tuple) else str(c))
def test_ssd_triton_gradients_half(case, dtype):
    """bfloat16 (and float16) gradients within 2e-2 of the float32 kernel's on the same (rounded) inputs."""
    *dims, chunk, options = case
    args, kw = make(*dims, seed=sum(dims) + 1, chunk=chunk, **options)
    low = [a.to(dtype) for a in args]
    low_kw = {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    ref = grads("triton", torch.float32, [a.float() for a in low],
                {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in low_kw.items()}, DEVICE)
    got = grads("triton", dtype, low, low_kw, DEVICE)
    assert_close(got, ref, tolerance(dtype), str(case[:7]))


@pytest.mark.parametrize("n_seg", [1, 3])
def test_ssd_fwd_output_before_the_gate(n_seg):
    """With z, the forward also returns y + D x before the gate (the backward's dz needs it), segments too."""
    from ssm_edu.kernels.ssd import ssd_fwd

    args, kw = make(2, 100, 2, 3, 1, 4, seed=9, chunk=16, D="h", z=True, h0=True)
    z = kw.pop("z")
    ref = ssd(*args, **{k: v for k, v in kw.items() if k != "chunk_size"}, impl="naive")
    args = [a.float().to(DEVICE) for a in args]
    kw = {k: (v.float().to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    y, _, pre = ssd_fwd(*args, **kw, z=z.float().to(DEVICE), return_pre_gate=True, n_seg=n_seg)
    assert rel_error(pre, ref) < 1e-5
    assert rel_error(y, ref * torch.nn.functional.silu(z)) < 1e-5


KNOBS = [dict(sides="fused"), dict(block_p=16, n_split=3), dict(sides="fused", block_p=16, n_split=2),
         dict(block_q=32)]


@pytest.fixture(scope="module")
def knob_case():
    args, kw = make(1, 35, 6, 40, 2, 12, seed=3, chunk=16, **ALL)  # 3 heads per group: splits of 2 and 1
    return reference(args, kw, torch.float32)


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: "-".join(f"{a}{b}" for a, b in k.items()))
def test_ssd_triton_backward_knobs(knobs, knob_case, monkeypatch):
    """The launch parameters change nothing: one and two launches of the chunk kernel, P blocks, head splits."""
    from ssm_edu.kernels import ssd as kernel

    ref, low, low_kw = knob_case
    plain = kernel.ssd_bwd
    monkeypatch.setattr(kernel, "ssd_bwd", lambda *a, **k: plain(*a, **k, **knobs))
    assert_close(grads("triton", torch.float32, low, low_kw, DEVICE), ref, tolerance(torch.float32), str(knobs))


@pytest.mark.parametrize("which", ["y only", "final state only", "x and C only"])
def test_ssd_triton_backward_partial(which):
    """Only y used, only the final state used (no dy), or only some inputs requiring gradients."""
    args, kw = make(2, 30, 2, 3, 1, 4, seed=7, chunk=16, D="h", h0=True, final=which != "y only")
    low = [a.float().double() for a in args]
    low_kw = {k: (v.float().double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    wrt = ("x", "C") if which == "x and C only" else None
    if which == "final state only":
        def run(impl, dtype, device):
            leaves = [a.detach().to(device, dtype).clone().requires_grad_() for a in low]
            _, hT = ssd(*leaves, **{k: (v.to(device, dtype) if isinstance(v, torch.Tensor) else v)
                                    for k, v in low_kw.items()}, impl=impl)
            (hT * torch.arange(hT.numel(), dtype=dtype, device=device).view(hT.shape).cos()).sum().backward()
            return {n: torch.zeros(t.shape, dtype=F64) if t.grad is None else t.grad.double().cpu()
                    for n, t in zip("x dt A B C".split(), leaves)}  # C does not reach the final state

        assert_close(run("triton", torch.float32, DEVICE), run("naive", F64, "cpu"), 1e-5, which)
    else:
        ref = grads("naive", F64, low, low_kw, wrt=wrt)
        assert_close(grads("triton", torch.float32, low, low_kw, DEVICE, wrt=wrt), ref, 1e-5, which)


def test_ssd_triton_gradients_do_not_depend_on_chunk_size():
    args, kw = make(1, 70, 2, 8, 1, 16, seed=11, **ALL)
    ref, low, low_kw = reference(args, kw, torch.float32)
    for chunk in (1, 16, 32, 100):
        low_kw["chunk_size"] = chunk
        assert_close(grads("triton", torch.float32, low, low_kw, DEVICE), ref, 1e-5, f"chunk_size={chunk}")


@pytest.mark.skipif(not ON_GPU, reason="needs CUDA")
def test_ssd_triton_gradients_mixed_dtypes_on_gpu():
    """Mamba-2 keeps A, D, dt_bias and dt in float32 with bfloat16 x, B, C, z: each gradient in its input's dtype."""
    args, kw = make(2, 300, 8, 64, 2, 64, seed=5, chunk=64, D="h", z=True, bias=True, softplus=True)
    x, dt, A, B, C = args
    leaves = dict(x=x.bfloat16(), dt=dt.float(), A=A.float(), B=B.bfloat16(), C=C.bfloat16(), D=kw["D"].float(),
                  z=kw["z"].bfloat16(), dt_bias=kw["dt_bias"].float())
    leaves = {k: v.cuda().requires_grad_() for k, v in leaves.items()}
    y = ssd(**leaves, chunk_size=64, dt_softplus=True, impl="triton")
    (y.float() * torch.linspace(-1, 1, y.numel(), device="cuda").view(y.shape)).sum().backward()
    ref = {k: v.detach().double().requires_grad_() for k, v in leaves.items()}
    yr = ssd(**ref, chunk_size=64, dt_softplus=True, impl="vectorized")
    (yr * torch.linspace(-1, 1, yr.numel(), device="cuda", dtype=F64).view(yr.shape)).sum().backward()
    for k, v in leaves.items():
        assert v.grad.dtype == v.dtype, k
        assert rel_error(v.grad, ref[k].grad) < 2e-2, k


def test_ssd_bwd_turns():
    """``ssd_bwd(..., turns=True)`` (Mamba-3's path): -<dS_k, J S_k> per angle pair at every chunk's start.

    Against the float64 loop: turning the keys B_s and queries C_s of every s >= k Q by one angle (per head
    and pair) turns the state entering chunk k by minus that angle and the final state by plus it, so the
    loss's derivative in that angle, a suffix sum of per-step derivatives, is "turns" + <dhT, J hT>. One
    group per head (each head turns its own keys); N/2 = 3 pairs, L not a multiple of Q, every option."""
    from ssm_edu.kernels.ssd import ssd_bwd
    from ssm_edu.mamba3 import rotate_pairs

    b, L, H, P, N, Q = 2, 45, 2, 5, 6, 16
    args, kw = make(b, L, H, P, H, N, seed=3, chunk=Q, **ALL)
    gen = torch.Generator().manual_seed(4)
    wy, wh = torch.randn(b, L, H, P, generator=gen, dtype=F64), torch.randn(b, H, P, N, generator=gen, dtype=F64)
    opts = {k: v for k, v in kw.items() if isinstance(v, torch.Tensor)}
    x, dt, A, B, C = args
    phi = torch.zeros(b, L, H, N // 2, dtype=F64, requires_grad=True)
    y, hT = ssd(x, dt, A, rotate_pairs(B, phi), rotate_pairs(C, phi), chunk_size=Q, dt_softplus=True,
                return_final_states=True, **opts, impl="naive")
    ((y * wy).sum() + (hT * wh).sum()).backward()
    suffix = phi.grad.flip(1).cumsum(1).flip(1)[:, ::Q].transpose(1, 2)  # (b, H, chunks, N/2)
    e, o = hT.detach()[..., 0::2], hT.detach()[..., 1::2]
    final = (wh[..., 0::2] * -o + wh[..., 1::2] * e).sum(2)  # <dhT, J hT>, J(e, o) = (-o, e): (b, H, N/2)
    f32 = lambda t: t.to(DEVICE, torch.float32)  # noqa: E731
    got = ssd_bwd(f32(wy), f32(wh), *(f32(t) for t in args), chunk_size=Q, dt_softplus=True,
                  **{k: f32(v) for k, v in opts.items()}, turns=True)
    assert got["chunk"] == Q and got["dB_parts"].dtype == got["dC_parts"].dtype == torch.float32
    assert "dB" not in got and "dC" not in got  # handed on unsummed, (b, L, parts, G, N)
    err = rel_error(got["turns"], suffix - final[:, :, None])
    assert err < tolerance(torch.float32), f"relative error {err:.3g}"
    assert "turns" not in ssd_bwd(f32(wy), None, *(f32(t) for t in args), chunk_size=Q, dt_softplus=True)  # off


@pytest.mark.parametrize("knobs,parts", [(dict(sides="split", block_p=16, n_split=2), (12, 6)),
                                         (dict(sides="fused", block_p=16, n_split=3), (9, 9))],
                         ids=["split", "fused"])
def test_ssd_triton_backward_parts(knobs, parts, knob_case, monkeypatch):
    """dB and dC as the chunk kernel leaves them: float32 parts, one per split of a group's heads and block of
    head dims, both sides' in one buffer (the output side's first; dC the output side's alone), handed on
    unsummed with ``turns`` (Mamba-3's path). Their sums over the parts are the gradients: split, 2 splits x 3
    blocks of 16 head dims per side, 12 parts of dB and 6 of dC; fused, 3 x 3 of each."""
    from ssm_edu.kernels import ssd as kernel

    ref, low, low_kw = knob_case
    plain, seen = kernel.ssd_bwd, []

    def parted(*a, **k):
        g = plain(*a, **k, **knobs, turns=True)
        dB, dC = g.pop("dB_parts"), g.pop("dC_parts")
        assert dB.dtype == dC.dtype == torch.float32 and "dB" not in g and "dC" not in g
        seen.append((dB.shape[2], dC.shape[2]))
        return dict(g, dB=dB.sum(2), dC=dC.sum(2))

    monkeypatch.setattr(kernel, "ssd_bwd", parted)
    assert_close(grads("triton", torch.float32, low, low_kw, DEVICE), ref, tolerance(torch.float32), str(knobs))
    assert seen == [parts]
