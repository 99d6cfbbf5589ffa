"""The Mamba-3 Triton kernels (chapter 9): forward, backward, decoding step and the first kernel.

On a CPU they run in Triton's interpreter (float32, small sizes); on a GPU the same tests run compiled,
in float32 and bfloat16, plus larger cases. Every case is checked against the float64 loop
(``mamba3_naive``) on the same rounded inputs; bfloat16 gradients against float32 ones. One case
uses the block shapes the benchmark times (N = 128, P = 64, default blocks), so that the timed
configuration is exercised in the interpreter too.
"""

import math

import pytest
import torch

import ssm_edu
from ssm_edu import Mamba3State, mamba3, mamba3_step
from ssm_edu.numerics import rel_error, tolerance

from test_mamba3 import assert_states_close, inputs

DEVICE = ssm_edu.default_device()
ON_GPU = DEVICE.type == "cuda"
F64 = torch.float64
DTYPES = [torch.float32] + ([torch.bfloat16] if ON_GPU else [])

# (b, L, H, P, G, N, R, chunk): odd sizes, groups, MIMO ranks that are and are not powers of two, L = 1,
# L not a multiple of the chunk, and the benchmark's block shapes (N = 128, P = 64) at a short length.
CASES = [
    (1, 1, 2, 3, 1, 4, None, 64),
    (2, 7, 4, 5, 2, 6, None, 4),
    (1, 37, 2, 3, 1, 4, None, 16),
    (1, 7, 2, 3, 1, 4, 2, 4),
    (1, 13, 2, 3, 2, 6, 4, 4),
    (1, 9, 2, 3, 1, 4, 3, 8),
    (1, 70, 1, 64, 1, 128, None, 64),
]
if ON_GPU:
    CASES += [
        (2, 1000, 8, 64, 1, 128, None, 64),
        (3, 333, 6, 48, 3, 32, None, 32),
        (2, 515, 4, 64, 1, 128, 4, 16),
        (1, 4096, 2, 64, 1, 128, None, 64),
    ]
ids = lambda c: "b{}-L{}-H{}-P{}-G{}-N{}-R{}-Q{}".format(*c)  # noqa: E731
dev = lambda t, dtype=torch.float32: None if t is None else t.to(DEVICE, dtype)  # noqa: E731


@pytest.fixture(autouse=True)
def fused_path(monkeypatch):
    """This file tests the fused kernel (kernels/mamba3.py) for SISO too; tests/test_mamba3_ssd.py the SSD path."""
    from ssm_edu.kernels import mamba3 as kernel

    monkeypatch.setattr(kernel, "SISO_PATH", "fused")


def rounded(args, kw, dtype):
    """The inputs rounded to dtype and back to float64: the reference sees what the kernel sees."""
    r = lambda t: t.to(dtype).double()  # noqa: E731
    return [r(t) for t in args], {k: (Mamba3State(*v) if isinstance(v, Mamba3State) else r(v)) for k, v in kw.items()}


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_forward(case, dtype, gen):
    """Against the loop in float64, with D, z, an initial state and the final state."""
    b, L, H, P, G, N, R, chunk = case
    args, kw = inputs(gen, b=b, L=L, H=H, P=P, G=G, N=N, R=R, state=True)
    ra, rk = rounded(args, kw, dtype)
    small = L * H < 200  # the loop at the sizes that also run on a CPU; at the GPU's, the chunked form (equal to it
    if not small:  # in float64: test_mamba3.py's tier tests) on the device, not beside 11 workers on the CPU
        to = lambda t: t.to(DEVICE)  # noqa: E731
        ra, rk = [to(t) for t in ra], {k: Mamba3State(*map(to, v)) if isinstance(v, Mamba3State) else to(v)
                                       for k, v in rk.items()}
    y_ref, s_ref = mamba3(*ra, **rk, chunk_size=64, return_final_state=True, impl="naive" if small else "vectorized")
    state = Mamba3State(*(dev(t) for t in kw["initial_state"]))
    y, s = mamba3(*(dev(t, dtype) for t in args), D=dev(kw["D"], dtype), z=dev(kw["z"], dtype), initial_state=state,
                  chunk_size=chunk, return_final_state=True, impl="triton")
    assert y.dtype == dtype and y.shape == args[0].shape and y.device.type == DEVICE.type
    assert s.h.dtype == torch.float32
    err = rel_error(y, y_ref)
    assert err < tolerance(dtype), f"relative error {err:.3g}"
    assert_states_close(s, s_ref, tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("R", [None, 2], ids=lambda r: "siso" if r is None else f"R{r}")
def test_forward_without_gate_or_state(R, dtype, gen):
    """Chapter 9's check: D only, L not a multiple of the chunk, small P and N (a configuration where an
    earlier kernel's bfloat16 path was wrong on an H100)."""
    args, _ = inputs(gen, b=1, L=70, H=2, P=8, G=1, N=16, R=R, extras=False)
    D = torch.rand(2, generator=gen, dtype=F64).to(dtype)
    ref = mamba3(*[t.to(dtype).double() for t in args], D=D.double(), impl="vectorized", chunk_size=16)
    out = mamba3(*(dev(t, dtype) for t in args), D=dev(D, dtype), chunk_size=32, impl="triton")
    assert out.dtype == dtype and rel_error(out, ref) < tolerance(dtype)


# the forward's launch variants (those the sweep times among them); on a GPU in bfloat16 (each variant
# is a separate compilation: the float32 kernels are covered by the tests above)
KNOBS = [dict(block_p=16), dict(block_p=64), dict(max_rows=16), dict(max_rows=64, num_warps=8),
         dict(fast_trig=False), dict(lowp=False)]
KNOBS += [dict(num_stages=1)] if ON_GPU else [dict(f32_precision="ieee")]


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: ",".join(f"{a}={v}" for a, v in k.items()))
def test_forward_knobs(knobs, gen):
    """Every launch variant computes the same function (float32 on a CPU, bfloat16 on a GPU)."""
    from ssm_edu.kernels.mamba3 import mamba3_triton

    for dtype in DTYPES[-1:]:
        for R in (None, 3):
            args, kw = inputs(gen, b=1, L=45, H=2, P=40, G=1, N=8, R=R)
            ra, rk = rounded(args, kw, dtype)
            ref = mamba3(*ra, **rk, impl="naive")
            y = mamba3_triton(*(dev(t, dtype) for t in args), D=dev(kw["D"], dtype), z=dev(kw["z"], dtype),
                              chunk_size=64, **knobs)
            assert rel_error(y, ref) < tolerance(dtype), (dtype, R)


def test_forward_result_does_not_depend_on_chunk_size(gen):
    args, _ = inputs(gen, L=21, extras=False)
    ref = mamba3(*args, impl="naive")
    for Q in (1, 16, 64):
        out = mamba3(*(dev(t) for t in args), chunk_size=Q, impl="triton")
        assert rel_error(out, ref) < 1e-5, Q


def test_triton_is_auto_on_gpu():
    from ssm_edu._dispatch import dispatch

    a = torch.zeros(2, device=DEVICE)
    fn = dispatch("mamba3", "auto", (a,), naive=print, vectorized=len, triton="mamba3:mamba3_triton")
    assert (fn.__name__ == "mamba3_triton") == ON_GPU


def test_forward_rejects_float64_and_auto_avoids_it(gen):
    args, kw = inputs(gen, L=4)
    with pytest.raises(ValueError, match="use impl='vectorized' for float64"):
        mamba3(*(t.to(DEVICE) for t in args), impl="triton")
    assert rel_error(mamba3(*args, **kw), mamba3(*args, **kw, impl="naive")) < 1e-12


# ---------------------------------------------------------------- backward


def grads(impl, args, kw, wy, dtype, chunk, state=True, final=True, **knobs):
    """Gradients of a loss that uses y and (with ``final``) every part of the final state."""
    from ssm_edu.kernels.mamba3 import mamba3_triton

    leaves = [t.to(DEVICE, dtype).clone().requires_grad_() for t in (*args, kw["D"], kw["z"], *kw["initial_state"])]
    init = Mamba3State(*leaves[9:]) if state else None
    if impl == "triton" and knobs:
        y, s = mamba3_triton(*leaves[:7], D=leaves[7], z=leaves[8], initial_state=init, chunk_size=chunk,
                             return_final_state=True, **knobs)
    else:
        y, s = mamba3(*leaves[:7], D=leaves[7], z=leaves[8], initial_state=init, chunk_size=chunk,
                      return_final_state=True, impl=impl)
    loss = (y.float() * wy.to(DEVICE)).sum()
    if final:
        loss = loss + (0.3 * s.h).sum() + 0.1 * (s.h ** 2).sum() + s.k.sum() + torch.sin(s.angle).sum() + s.x.sum()
    loss.backward()
    return [t.grad for t in leaves]


NAMES = ["x", "dt", "A", "B", "C", "lam", "theta", "D", "z", "h0", "angle0", "k0", "x0"]


def grad_error(g, r):
    """Relative error of a gradient; one that is zero in exact arithmetic (dθ for L = 1 without a state: a
    common rotation of one token's q and k changes nothing) is compared in absolute terms instead."""
    g = torch.zeros_like(r) if g is None else g
    r = torch.zeros_like(g) if r is None else r
    if torch.linalg.vector_norm(r.double()).item() < 1e-9:
        return torch.linalg.vector_norm(g.double()).item()
    return rel_error(g, r)


@pytest.mark.heavy  # 20 to 110 s each in the GPU test phase of 2026-12-07: started first there
@pytest.mark.parametrize("state", [True, False], ids=["state", "no-state"])
@pytest.mark.parametrize("case", CASES[:7] + ([(2, 333, 4, 48, 2, 32, None, 64), (1, 200, 2, 64, 1, 128, 4, 64)]
                                              if ON_GPU else []), ids=ids)
def test_gradients_float32_against_float64(case, state, gen):
    """Every input's gradient, the initial state's included, against autograd through the float64 loop."""
    check_gradients(case, state, gen)


def check_gradients(case, state, gen):
    """The float32 Triton gradients of one case against the float64 loop's (or the chunked form's)."""
    b, L, H, P, G, N, R, chunk = case
    args, kw = inputs(gen, b=b, L=L, H=H, P=P, G=G, N=N, R=R, state=True)
    wy = torch.randn(args[0].shape, generator=gen)
    ref = grads("naive" if L * H < 200 else "vectorized", args, kw, wy, F64, chunk, state, final=state)
    got = grads("triton", args, kw, wy, torch.float32, chunk, state, final=state)
    for name, g, r in zip(NAMES, got, ref):
        if r is None:
            assert g is None, name
            continue
        assert g is not None and g.dtype == torch.float32, name
        err = grad_error(g, r)
        assert err < tolerance(torch.float32), f"d{name}: relative error {err:.3g}"


@pytest.mark.heavy
@pytest.mark.skipif(not ON_GPU, reason="bfloat16 arithmetic needs a GPU (the interpreter computes in float32)")
@pytest.mark.parametrize("R", [None, 4], ids=["siso", "R4"])
def test_gradients_bfloat16_against_float32(R, gen):
    """bfloat16 inputs (bf16 tensor-core products) against float32 gradients of the same rounded inputs."""
    check_bfloat16_gradients(R, gen)


def check_bfloat16_gradients(R, gen):
    """The bfloat16 Triton gradients against the float32 ones at the benchmark's N and P (rank R or SISO)."""
    args, kw = inputs(gen, b=2, L=300, H=4, P=64, G=1, N=128, R=R, state=True)
    args, kw = rounded(args, kw, torch.bfloat16)
    wy = torch.randn(args[0].shape, generator=gen)
    ref = grads("triton", args, kw, wy, torch.float32, 64)
    got = grads("triton", args, kw, wy, torch.bfloat16, 64)
    for name, g, r in zip(NAMES, got, ref):
        err = grad_error(g.float(), r)
        assert err < tolerance(torch.bfloat16), f"d{name}: relative error {err:.3g}"


BWD_KNOBS = [dict(bwd_heads=0), dict(bwd_split=False), dict(bwd_max_rows=16)]
if not ON_GPU:  # the interpreter ignores warps; on a GPU each variant is a compilation
    BWD_KNOBS += [dict(bwd_heads=2), dict(bwd_state_block_p=32), dict(bwd_max_rows=64),
                  dict(bwd_chunk_warps=4, bwd_state_warps=8), dict(bwd_x_heads=1)]


@pytest.mark.parametrize("knobs", BWD_KNOBS, ids=lambda k: ",".join(f"{a}={v}" for a, v in k.items()))
def test_backward_knobs(knobs, gen):
    """The backward's launch variants: heads per program (0: the whole group, read-modify-write of dB, dC;
    otherwise atomics), one launch or two, P blocks of the state walk, rows per chunk, warps."""
    args, kw = inputs(gen, b=1, L=21, H=4, P=20, G=2, N=6, R=2, state=True)
    wy = torch.randn(args[0].shape, generator=gen)
    ref = grads("naive", args, kw, wy, F64, 64)
    got = grads("triton", args, kw, wy, torch.float32, 64, **knobs)
    for name, g, r in zip(NAMES, got, ref):
        assert grad_error(g, r) < tolerance(torch.float32), name


def test_gradients_of_outputs_used_alone(gen):
    """Only y, only the final state, only the final angle: each path of the backward on its own."""
    check_outputs_used_alone(gen)


def check_outputs_used_alone(gen):
    """The float32 Triton gradients against the float64 loop's with only one output in the loss."""
    args, kw = inputs(gen, b=1, L=20, H=2, P=3, G=1, N=4, state=True)
    for pick in (lambda y, s: y.sum(), lambda y, s: s.h.sum(), lambda y, s: torch.cos(s.angle).sum(),
                 lambda y, s: s.k.sum()):
        out = {}
        for impl, dtype in (("naive", F64), ("triton", torch.float32)):
            leaves = [t.to(DEVICE, dtype).clone().requires_grad_() for t in (*args, *kw["initial_state"])]
            y, s = mamba3(*leaves[:7], initial_state=Mamba3State(*leaves[7:]), return_final_state=True, impl=impl,
                          chunk_size=8)
            pick(y, s).backward()
            out[impl] = [t.grad for t in leaves]
        for g, r in zip(out["triton"], out["naive"]):
            assert (g is None and r is None) or grad_error(g, r) < tolerance(torch.float32)


# ---------------------------------------------------------------- decoding step


@pytest.mark.parametrize("joined", [False, True], ids=["pairs", "joined"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("R", [None, 2, 4], ids=lambda r: "siso" if r is None else f"R{r}")
def test_step_reproduces_the_scan(R, dtype, joined, gen, monkeypatch):
    """The Triton step, token by token from a cache, gives the scan's outputs and final state; with the
    state's even and odd columns read apart, or as contiguous rows split in registers (``JOINED``; N = 6:
    three pairs in a block of four)."""
    from ssm_edu.kernels import mamba3_step as step_kernel

    monkeypatch.setattr(step_kernel, "JOINED", joined)
    args, kw = inputs(gen, b=2, L=6, H=4, P=20 if ON_GPU else 5, G=2, N=6, R=R, state=True)
    ra, rk = rounded(args, kw, dtype)
    y_ref, s_ref = mamba3(*ra, **rk, return_final_state=True, impl="naive")
    state, ys = Mamba3State(*(dev(t) for t in kw["initial_state"])), []
    for t in range(args[0].shape[1]):
        y, state = mamba3_step(state, *(dev(a[:, t], dtype) for a in args), D=dev(kw["D"], dtype),
                               z=dev(kw["z"][:, t], dtype), impl="triton")
        assert y.dtype == dtype and all(s.dtype == torch.float32 for s in state)
        ys.append(y)
    assert rel_error(torch.stack(ys, dim=1), y_ref) < tolerance(dtype)
    assert_states_close(state, s_ref, tolerance(dtype))


def test_step_from_nothing_and_auto(gen):
    """No cache is the start of a sequence; "auto" is the kernel on a GPU and the loop on a CPU."""
    args, kw = inputs(gen, b=2, L=1, H=3, P=17, G=1, N=10, R=2, extras=False)
    first = [dev(a[:, 0]) for a in args]
    y, s = mamba3_step(None, *first, impl="triton")
    ref = mamba3(*args, impl="naive")[:, 0]
    assert rel_error(y, ref) < 1e-5 and float(s.angle.min()) >= 0 and float(s.angle.max()) < 2 * math.pi + 1e-6
    y_auto, _ = mamba3_step(None, *first)
    assert rel_error(y_auto, ref) < 1e-5
    with pytest.raises(ValueError, match="unknown impl='loop'"):
        mamba3_step(None, *first, impl="loop")


# ---------------------------------------------------------------- the first kernel


@pytest.mark.parametrize("case", [(1, 1, 1, 3, 1, 4), (2, 13, 4, 20, 2, 6), (1, 20, 1, 64, 1, 128)],
                         ids=lambda c: "b{}-L{}-H{}-P{}-G{}-N{}".format(*c))
def test_first_kernel(case, gen):
    """The chapter's first kernel (SISO, no D, gate or states) against the loop."""
    from ssm_edu.kernels.mamba3_first import mamba3_first

    b, L, H, P, G, N = case
    args, _ = inputs(gen, b=b, L=L, H=H, P=P, G=G, N=N, extras=False)
    ref = mamba3(*(t.float().double() for t in args), impl="naive")
    y = mamba3_first(*(dev(t) for t in args))
    assert y.shape == args[0].shape and rel_error(y, ref) < tolerance(torch.float32)
