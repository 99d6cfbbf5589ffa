"""Mamba-3 (SISO) through the SSD kernels (``kernels/mamba3_ssd.py``): the rotation kernel and the whole path.

The path is reached as ``mamba3(impl="triton")`` with ``kernels.mamba3.SISO_PATH = "ssd"`` (as the
benchmark's ``triton-ssd`` rows run it). Every case against the float64 loop on the same rounded inputs;
gradients of every input, the initial state's included, against autograd through the loop. On a CPU in
Triton's interpreter (float32); on a GPU also bfloat16 and larger cases.
"""

import pytest
import torch
import triton
import triton.language as tl

import ssm_edu
from ssm_edu import Mamba3State, mamba3
from ssm_edu.mamba3 import cumulative_angle, rotate_pairs
from ssm_edu.numerics import rel_error, tolerance

from test_mamba3 import assert_states_close, inputs
from test_mamba3_triton import (CASES, DTYPES, NAMES, check_bfloat16_gradients, check_gradients,
                                check_outputs_used_alone, dev, grad_error, grads, ids, rounded)

DEVICE = ssm_edu.default_device()
ON_GPU = DEVICE.type == "cuda"
F64 = torch.float64
SISO = [c for c in CASES if c[6] is None]


@pytest.fixture
def ssd_path(monkeypatch):
    from ssm_edu.kernels import mamba3 as kernel

    monkeypatch.setattr(kernel, "SISO_PATH", "ssd")


@pytest.mark.parametrize("form", ["walk", "tiles", "joined"])
@pytest.mark.parametrize("N", [4, 6, 128], ids=lambda n: f"N{n}")
def test_rotate_against_pytorch(N, form, gen, monkeypatch):
    """k̃ = r Rot(Φ) B and q = Rot(Φ) C per head, the last angle, and every gradient (G = 2 groups of 3 heads,
    L = 41 not a multiple of the tile, N/2 = 3 not a power of two); the forward rotation walking the tiles in
    order, or every tile at once from the running sum of the tiles' angles, with B, C, k̃, q moved one entry at
    a time or as contiguous rows ("joined", forward and backward)."""
    from ssm_edu.kernels import mamba3_ssd
    from ssm_edu.kernels.mamba3_ssd import rotate

    monkeypatch.setattr(mamba3_ssd, "ROTATE", form)

    b, L, G, H = 2, 41, 2, 6
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    B, C, theta, dt, r, psi0 = rnd(b, L, G, N), rnd(b, L, G, N), rnd(b, L, H, N // 2), rnd(b, L, H).abs(), \
        rnd(b, L, H), rnd(b, H, N // 2)
    wk, wq, wpsi = rnd(b, L, H, N), rnd(b, L, H, N), rnd(b, H, N // 2)

    def run(fn, dtype):
        leaves = [t.to(DEVICE, dtype).requires_grad_() for t in (B, C, theta, dt, r, psi0)]
        k, q, psi = fn(*leaves)
        loss = (k.double() * wk.to(DEVICE)).sum() + (q.double() * wq.to(DEVICE)).sum()
        loss = loss + (torch.sin(psi.double()) * wpsi.to(DEVICE)).sum()
        loss.backward()
        return [k, q, torch.remainder(psi, 2 * torch.pi)], [t.grad for t in leaves]

    def reference(B, C, theta, dt, r, psi0):
        phi = cumulative_angle(dt, theta, psi0)[:, :, :, None]  # (b, L, H, 1, N/2)
        heads = lambda M: M.repeat_interleave(H // G, dim=2)[:, :, :, None]  # noqa: E731
        k, q = rotate_pairs(heads(B), phi)[:, :, :, 0], rotate_pairs(heads(C), phi)[:, :, :, 0]
        return k * r[..., None], q, phi[:, -1, :, 0]

    out, got = run(rotate, torch.float32)
    ref_out, ref = run(reference, F64)
    for name, a, e in zip(("k", "q", "angle"), out, ref_out):
        err = rel_error(torch.sin(a) if name == "angle" else a, torch.sin(e) if name == "angle" else e)
        assert err < tolerance(torch.float32), f"{name}: relative error {err:.3g}"
    for name, g, e in zip(("B", "C", "theta", "dt", "r", "psi0"), got, ref):
        assert g.dtype == torch.float32, name
        assert rel_error(g, e) < tolerance(torch.float32), f"d{name}: relative error {rel_error(g, e):.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SISO, ids=ids)
def test_forward(case, dtype, gen, ssd_path):
    """Against the loop in float64, with D, z, an initial state and the final state."""
    b, L, H, P, G, N, R, chunk = case
    args, kw = inputs(gen, b=b, L=L, H=H, P=P, G=G, N=N, state=True)
    ra, rk = rounded(args, kw, dtype)
    y_ref, s_ref = mamba3(*ra, **rk, return_final_state=True, impl="naive" if L * H < 200 else "vectorized")
    state = Mamba3State(*(dev(t) for t in kw["initial_state"]))
    y, s = mamba3(*(dev(t, dtype) for t in args), D=dev(kw["D"], dtype), z=dev(kw["z"], dtype), initial_state=state,
                  chunk_size=chunk, return_final_state=True, impl="triton")
    assert y.dtype == dtype and y.shape == args[0].shape and s.h.dtype == torch.float32
    err = rel_error(y, y_ref)
    assert err < tolerance(dtype), f"relative error {err:.3g}"
    assert_states_close(s, s_ref, tolerance(dtype))


def test_forward_without_extras_and_chunk_sizes(gen, ssd_path):
    """No D, z or state; the result does not depend on the chunk size."""
    args, _ = inputs(gen, b=1, L=21, H=2, P=8, G=1, N=16, extras=False)
    ref = mamba3(*args, impl="naive")
    for Q in (1, 16, 64):
        out = mamba3(*(dev(t) for t in args), chunk_size=Q, impl="triton")
        assert rel_error(out, ref) < tolerance(torch.float32), Q


def test_mimo_and_float16_take_the_fused_kernel(gen, ssd_path):
    """Inputs the path does not take go to the fused kernel: same function, no error."""
    from ssm_edu.kernels import mamba3_ssd

    args, _ = inputs(gen, b=1, L=9, H=2, P=3, G=1, N=4, R=2, extras=False)
    assert not mamba3_ssd.supported(args[0]) and not mamba3_ssd.supported(args[0][:, :, :, 0].half())
    out = mamba3(*(dev(t) for t in args), impl="triton")
    assert rel_error(out, mamba3(*args, impl="naive")) < tolerance(torch.float32)
    with pytest.raises(ValueError, match="SISO float32 or bfloat16"):
        mamba3_ssd.mamba3_ssd(*(dev(t) for t in args))


def test_unknown_path_is_refused(gen):
    from ssm_edu.kernels.mamba3 import mamba3_triton

    args, _ = inputs(gen, L=3, extras=False)
    with pytest.raises(ValueError, match="path must be 'fused' or 'ssd'"):
        mamba3_triton(*(dev(t) for t in args), path="cuda")


@pytest.mark.parametrize("state", [True, False], ids=["state", "no-state"])
@pytest.mark.parametrize("case", SISO[:4] + ([(2, 333, 4, 48, 2, 32, None, 64)] if ON_GPU else []), ids=ids)
def test_gradients_float32_against_float64(case, state, gen, ssd_path):
    """Every input's gradient, the initial state's included, against autograd through the float64 loop."""
    check_gradients(case, state, gen)


def test_gradients_of_outputs_used_alone(gen, ssd_path):
    """Only y, only the final state, only the final angle, only the last key: no gradient of y reaches the
    backward in all but the first (SSD's then starts from zeros, and the correction adds nothing)."""
    check_outputs_used_alone(gen)


@pytest.mark.skipif(not ON_GPU, reason="bfloat16 arithmetic needs a GPU (the interpreter computes in float32)")
def test_gradients_bfloat16_against_float32(gen, ssd_path):
    """bfloat16 inputs against float32 gradients of the same rounded inputs, at the benchmark's N and P."""
    check_bfloat16_gradients(None, gen)


def test_ssd_gradient_of_dt_through_the_decays_alone(gen):
    """``ssd_bwd(..., ddt_decay_only=True)`` (what the path's backward asks for): dL/dΔ as if Δ's role as the
    input's weight were a constant.

    The float64 reference holds that weight fixed with x' = x Δ.detach() / Δ (so Δ x' = x Δ.detach())."""
    from ssm_edu.kernels.ssd import ssd_bwd

    b, L, H, P, G, N = 1, 37, 4, 5, 2, 6
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=F64)  # noqa: E731
    x, B, C = rnd(b, L, H, P), rnd(b, L, G, N), rnd(b, L, G, N)
    dt = 0.05 + 0.2 * torch.rand(b, L, H, generator=gen, dtype=F64)
    A, wy = -(0.2 + torch.rand(H, generator=gen, dtype=F64)), rnd(b, L, H, P)
    d64 = dt.clone().requires_grad_()
    y = ssm_edu.ssd(x * (d64.detach() / d64)[..., None], d64, A, B, C, impl="naive")
    (y * wy).sum().backward()
    g = ssd_bwd(dev(wy), None, dev(x), dev(dt), *(dev(t) for t in (A, B, C)), chunk_size=16, ddt_decay_only=True)
    err = rel_error(g["ddt"], d64.grad)
    assert err < tolerance(torch.float32), f"relative error {err:.3g}"


def test_gradients_where_the_decays_are_slow(ssd_path):
    """|A| ~ 0.01: Δ̃ = -Δ A is small and the keys' scale r = w / Δ̃ large. dA and dΔ come from the decays
    alone: summed through r and SSD's own weight gradient, two large parts cancel, and on these inputs
    dA erred by 2e-5 (measured on a CPU, in the interpreter), against 3e-7 now."""
    gen = torch.Generator().manual_seed(0)
    args, kw = inputs(gen, b=1, L=40, H=2, P=4, G=1, N=4, state=True)
    args = list(args)
    args[2] = args[2] * 0.01  # A in [-0.022, -0.002]
    wy = torch.randn(args[0].shape, generator=gen)
    ref = grads("naive", args, kw, wy, F64, 16)
    got = grads("triton", args, kw, wy, torch.float32, 16)
    for name, g, r in zip(NAMES, got, ref):
        err = grad_error(g, r)
        assert err < tolerance(torch.float32), f"d{name}: relative error {err:.3g}"


def test_boundary_sums_of_the_angle_gradient(gen, ssd_path, monkeypatch):
    """The backward's sums of dΦ from every chunk boundary u on come from SSD's states, not from a walk over
    the tokens: G_u = -<dS_u, J S_u> + <dh_T, J h_T> (+ dΦ_T, the returned angle's gradient), J(e, o) = (-o, e).
    Against the float64 loop, where G_u = dθ_u / Δ_u; and dθ against the walk over all the tiles (the rotation's
    backward without the boundary sums) in float32."""
    from ssm_edu.kernels import mamba3_ssd

    seen = {}
    plain = mamba3_ssd._rotate_backward

    def spy(*a, bounds=None, Q=0, form=None):
        seen.update(bounds=bounds, Q=Q, walked=plain(*a))
        return plain(*a, bounds=bounds, Q=Q, form=form)

    monkeypatch.setattr(mamba3_ssd, "_rotate_backward", spy)
    args, kw = inputs(gen, b=2, L=70, H=2, P=8, G=1, N=16, state=True)
    wy = torch.randn(args[0].shape, generator=gen)
    ref = grads("naive", args, kw, wy, F64, 16)
    got = grads("triton", args, kw, wy, torch.float32, 16)
    Q, bounds, dt = seen["Q"], seen["bounds"].cpu(), args[1]  # on the CPU: ref and got are on the test device
    assert bounds.shape == (2, 2, 5, 8) and Q == 16  # boundaries 0, 16, 32, 48, 64 (chunk 0's is not used)
    expected = (ref[6].cpu() / dt[..., None])[:, ::Q].transpose(1, 2)  # dθ_u / Δ_u: (b, H, chunks, N/2)
    err = rel_error(bounds[:, :, 1:], expected[:, :, 1:])
    assert err < tolerance(torch.float32), f"boundary sums: relative error {err:.3g}"
    assert rel_error(got[6], seen["walked"][2]) < tolerance(torch.float32)
    assert grad_error(got[6], ref[6]) < tolerance(torch.float32)


@pytest.mark.parametrize("L,H", [(300, 4), (1000, 2)], ids=["L300", "L1000"])
def test_angle_gradient_with_bfloat16_roundings_emulated(L, H, ssd_path, monkeypatch):
    """dθ where a GPU rounds to bfloat16, emulated in the interpreter's float32: k̃ and q (SSD's keys and
    queries) and the states SSD's backward stores. Its error against float32 must not grow with L.

    dθ_t = Δ_t Σ_{s>=t} dΦ_s is a long sum that cancels, while the rounding errors of its terms do not.
    Summed over every later token, as before the boundary sums, with the gradients of k̃ and q rounded too
    (SSD handed them on in bfloat16), it erred by 0.021 at L = 300 and 0.042 at L = 1000 (measured here);
    the bfloat16 tolerance is 0.02. Restarted at every chunk from SSD's states: 0.0072 and 0.0076; the same
    emulation without the restarts (the walk over all the tiles, float32 gradients of k̃ and q) 0.015 and
    0.030, and it must still err more."""
    from ssm_edu.kernels import mamba3_ssd
    from ssm_edu.kernels import ssd

    gen = torch.Generator().manual_seed(0)
    args, kw = inputs(gen, b=2, L=L, H=H, P=64, G=1, N=128, state=True)
    args, kw = rounded(args, kw, torch.bfloat16)
    wy = torch.randn(args[0].shape, generator=gen)
    ref = grads("triton", args, kw, wy, torch.float32, 64)[6]

    bf16 = lambda t: t.to(torch.bfloat16).float()  # noqa: E731
    rotate_fwd, rotate_bwd, states = mamba3_ssd._rotate_forward, mamba3_ssd._rotate_backward, ssd._ssd_bwd_states

    def rounded_fwd(*a, form=None):
        k, q, *rest = rotate_fwd(*a, form=form)
        return (bf16(k), bf16(q), *rest)

    class RoundedStates:  # _ssd_bwd_states[grid](...), then its states (argument 6) rounded
        def __getitem__(self, grid):
            def launch(*a, **k):
                states[grid](*a, **k)
                a[6].copy_(bf16(a[6]))
            return launch

    monkeypatch.setattr(mamba3_ssd, "_rotate_forward", rounded_fwd)
    monkeypatch.setattr(ssd, "_ssd_bwd_states", RoundedStates())
    err = grad_error(grads("triton", args, kw, wy, torch.float32, 64)[6], ref)
    assert err < 0.01, f"dθ: relative error {err:.3g}"
    monkeypatch.setattr(mamba3_ssd, "_rotate_backward", lambda *a, bounds=None, Q=0, form=None: rotate_bwd(*a))
    walked = grad_error(grads("triton", args, kw, wy, torch.float32, 64)[6], ref)
    assert walked > 1.5 * err, f"dθ without the boundary sums: relative error {walked:.3g}, with them {err:.3g}"


@pytest.mark.parametrize("form", ["tiles", "joined"])
def test_the_forms_of_the_rotation_give_the_same_scan(gen, form):
    """The scan through SSD with each form of the rotation against the walk: the same outputs, final state
    and gradients (float32, an initial state with its angle, L = 70 over two tiles and a part; N/2 = 12 pairs
    in a block of 16, the last four masked), and a clear error for an unknown form."""
    args, kw = inputs(gen, b=2, L=70, H=2, P=8, G=1, N=24, state=True)
    wy = torch.randn(args[0].shape, generator=gen)
    walk = grads("triton", args, kw, wy, torch.float32, 16, path="ssd", rotate="walk")
    other = grads("triton", args, kw, wy, torch.float32, 16, path="ssd", rotate=form)
    for name, a, e in zip(NAMES, other, walk):
        assert grad_error(a, e) < tolerance(torch.float32), name
    from ssm_edu.kernels.mamba3 import mamba3_triton

    x = args[0].to(DEVICE, torch.float32)
    with pytest.raises(ValueError, match="rotation's form"):
        mamba3_triton(x, *(t.to(DEVICE, torch.float32) for t in args[1:]), path="ssd", rotate="spiral")


@pytest.mark.parametrize("form", ["walk", "tiles", "joined"])
def test_rotation_backward_sums_the_parts(form, gen):
    """``_rotate_backward`` takes dL/dk̃ and dL/dq as float32 parts (b, L, parts, H, N), as SSD's backward
    leaves them, and sums them as it reads them: the same gradients as from their sums, with and without the
    boundary sums (one program per tile, or a walk); a None gradient reads nothing and counts as zero. Each
    form's loads: even and odd entries apart ("walk", "tiles") or contiguous rows ("joined")."""
    from ssm_edu.kernels import mamba3_ssd

    b, L, G, H, N, parts_k, parts_q = 2, 41, 2, 6, 6, 3, 2
    rnd = lambda *s: torch.randn(*s, generator=gen).to(DEVICE)  # noqa: E731
    B, C, theta, r, psi0 = rnd(b, L, G, N), rnd(b, L, G, N), rnd(b, L, H, N // 2), rnd(b, L, H), rnd(b, H, N // 2)
    dt = rnd(b, L, H).abs()
    BLOCK_L, BLOCK_I = mamba3_ssd._blocks(N // 2, 16)
    *_, psi_tiles = mamba3_ssd._rotate_forward(B, C, theta, dt, r, psi0, torch.float32, BLOCK_L, BLOCK_I, form=form)
    gk, gq, gpsi = rnd(b, L, parts_k, H, N), rnd(b, L, parts_q, H, N), rnd(b, H, N // 2)
    zeros = torch.zeros(b, L, H, N, device=DEVICE)
    for bounds in (None, rnd(b, H, -(-L // BLOCK_L), N // 2)):
        def run(k, q):
            return mamba3_ssd._rotate_backward(B, C, theta, dt, r, psi_tiles, k, q, gpsi, BLOCK_L, BLOCK_I,
                                               bounds=bounds, Q=BLOCK_L, form=form)

        for got, ref in ((run(gk, gq), run(gk.sum(2), gq.sum(2))), (run(None, gq), run(zeros, gq.sum(2))),
                         (run(gk, None), run(gk.sum(2), zeros))):
            for name, a, e in zip(("B", "C", "theta", "dt", "r", "psi0"), got, ref):
                err = rel_error(a, e)
                assert err < 1e-6, f"d{name} ({'no bounds' if bounds is None else 'bounds'}): {err:.3g}"


@pytest.mark.parametrize("sides,form", [("split", "joined"), ("fused", "tiles"), ("split", "walk")])
def test_gradients_with_the_parts_handed_to_the_rotation(sides, form, gen, ssd_path, monkeypatch):
    """The path's backward with SSD's dB, dC in several parts (blocks of 16 of P = 40 head dims: split, 6 parts
    of dL/dk̃ and 3 of dL/dq; fused, 3 and 3), summed by the rotation's kernel: every gradient against autograd
    through the float64 loop."""
    from ssm_edu.kernels import mamba3_ssd, ssd

    plain_ssd, plain_rotate, seen = ssd.ssd_bwd, mamba3_ssd._rotate_backward, []
    monkeypatch.setattr(ssd, "ssd_bwd", lambda *a, **k: plain_ssd(*a, **k, block_p=16, sides=sides))

    def spy(B, C, theta, dt, r, psi_tiles, gk, gq, *a, **k):
        seen.append((gk.shape[2], gq.shape[2]))
        return plain_rotate(B, C, theta, dt, r, psi_tiles, gk, gq, *a, **k)

    monkeypatch.setattr(mamba3_ssd, "_rotate_backward", spy)
    args, kw = inputs(gen, b=2, L=37, H=2, P=40, G=1, N=6, state=True)
    wy = torch.randn(args[0].shape, generator=gen)
    ref = grads("naive", args, kw, wy, F64, 16)
    got = grads("triton", args, kw, wy, torch.float32, 16, path="ssd", rotate=form)
    assert seen == [(6, 3) if sides == "split" else (3, 3)]
    for name, g, r in zip(NAMES, got, ref):
        err = grad_error(g, r)
        assert err < tolerance(torch.float32), f"d{name}: relative error {err:.3g}"


# ---------------------------------------------------------------- the forward with the rotation fused


# (b, L, H, P, G, N, chunk): L = 1, L not a multiple of the chunk, groups, N/2 = 3 and 12 (not powers of two:
# pairs in a block of 16, the rest masked), batch 1, the benchmark's N and P at a short length.
FUSED_CASES = [
    (1, 1, 2, 3, 1, 4, 64),
    (2, 7, 4, 5, 2, 6, 4),
    (1, 37, 2, 3, 1, 4, 16),
    (2, 45, 2, 8, 1, 24, 16),
    (1, 70, 1, 64, 1, 128, 64),
]


def fused_run(args, kw, dtype, chunk, extras=True, final=True, fused=True, h_only=False):
    """mamba3 through SSD (no gradients) with the rotation fused into the forward, or not (``fused``)."""
    from ssm_edu.kernels.mamba3 import mamba3_triton

    state = None
    if extras:
        state = dev(kw["initial_state"].h) if h_only else Mamba3State(*(dev(t) for t in kw["initial_state"]))
    with torch.no_grad():
        return mamba3_triton(*(dev(t, dtype) for t in args), D=dev(kw["D"], dtype) if extras else None,
                             z=dev(kw["z"], dtype) if extras else None, initial_state=state, chunk_size=chunk,
                             return_final_state=final, path="ssd", fused_rotation=fused)


@pytest.mark.parametrize("extras", [True, False], ids=["D,z,state,final", "plain"])
@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: "b{}L{}H{}P{}G{}N{}Q{}".format(*c))
def test_fused_forward_against_the_loop(case, extras, gen):
    """The fused forward (float32) against the float64 loop on the same inputs: y, and the final state (h, angle,
    last key, last x); with D, z and an initial state (whose β-term and angle enter), or none of them."""
    b, L, H, P, G, N, chunk = case
    args, kw = inputs(gen, b=b, L=L, H=H, P=P, G=G, N=N, state=True)
    ref_kw = dict(kw) if extras else {}
    y_ref, s_ref = mamba3(*args, **ref_kw, return_final_state=True, impl="naive" if L * H < 200 else "vectorized")
    out = fused_run(args, kw, torch.float32, chunk, extras=extras, final=extras)
    y, s = out if extras else (out, None)
    assert y.dtype == torch.float32 and y.shape == args[0].shape
    err = rel_error(y, y_ref)
    assert err < tolerance(torch.float32), f"relative error {err:.3g}"
    if extras:
        assert s.h.dtype == torch.float32
        assert_states_close(s, s_ref, tolerance(torch.float32))


def test_fused_forward_against_the_present_path(gen):
    """The same function as the path through the materialised k̃ and q (float32): y and the final state, for
    chunk sizes 16, 32 and 64 (the result does not depend on it), and an initial state given as h alone."""
    args, kw = inputs(gen, b=2, L=45, H=2, P=8, G=1, N=24, state=True)
    for chunk in (16, 32, 64):
        (y, s), (y0, s0) = (fused_run(args, kw, torch.float32, chunk, fused=f) for f in (True, False))
        assert rel_error(y, y0) < tolerance(torch.float32), chunk
        assert_states_close(s, s0, tolerance(torch.float32))
    (y, s), (y0, s0) = (fused_run(args, kw, torch.float32, 16, fused=f, h_only=True) for f in (True, False))
    assert rel_error(y, y0) < tolerance(torch.float32) and rel_error(s.h, s0.h) < tolerance(torch.float32)


def test_fused_forward_bfloat16_against_float32(gen):
    """bfloat16 inputs against float32 on the same rounded inputs (on a CPU the interpreter computes in float32:
    this checks the casts; on a GPU, bfloat16 tensor-core products)."""
    args, kw = inputs(gen, b=2, L=70 if not ON_GPU else 300, H=2, P=64, G=1, N=128, state=True)
    args, kw = rounded(args, kw, torch.bfloat16)
    y32, s32 = fused_run(args, kw, torch.float32, 64)
    y, s = fused_run(args, kw, torch.bfloat16, 64)
    assert y.dtype == torch.bfloat16 and s.h.dtype == torch.float32
    err = rel_error(y.float(), y32)
    assert err < tolerance(torch.bfloat16), f"relative error {err:.3g}"
    assert_states_close(s, s32, tolerance(torch.bfloat16))


@pytest.mark.parametrize("state", [True, False], ids=["state", "no-state"])
@pytest.mark.parametrize("case", [SISO[1], SISO[2], (2, 45, 2, 8, 1, 24, None, 16)], ids=ids)
def test_fused_gradients_float32_against_float64(case, state, gen):
    """With gradients the fused forward runs under ``_FusedScan``, whose backward recomputes k̃ and q: every
    input's gradient against autograd through the float64 loop."""
    b, L, H, P, G, N, R, chunk = case
    args, kw = inputs(gen, b=b, L=L, H=H, P=P, G=G, N=N, state=True)
    wy = torch.randn(args[0].shape, generator=gen)
    ref = grads("naive" if L * H < 200 else "vectorized", args, kw, wy, F64, chunk, state, final=state)
    got = grads("triton", args, kw, wy, torch.float32, chunk, state, final=state, path="ssd", fused_rotation=True)
    for name, g, r in zip(NAMES, got, ref):
        if r is None:
            assert g is None, name
            continue
        err = grad_error(g, r)
        assert err < tolerance(torch.float32), f"d{name}: relative error {err:.3g}"


@pytest.mark.skipif(not ON_GPU, reason="bfloat16 arithmetic needs a GPU (the interpreter computes in float32)")
def test_fused_gradients_bfloat16_against_float32(gen):
    """bfloat16 gradients through ``_FusedScan`` against float32 ones, at the benchmark's N and P."""
    args, kw = inputs(gen, b=2, L=300, H=4, P=64, G=1, N=128, state=True)
    args, kw = rounded(args, kw, torch.bfloat16)
    wy = torch.randn(args[0].shape, generator=gen)
    ref = grads("triton", args, kw, wy, torch.float32, 64, path="ssd", fused_rotation=True)
    got = grads("triton", args, kw, wy, torch.bfloat16, 64, path="ssd", fused_rotation=True)
    for name, g, r in zip(NAMES, got, ref):
        err = grad_error(g.float(), r)
        assert err < tolerance(torch.bfloat16), f"d{name}: relative error {err:.3g}"


def test_fused_rotation_flag_and_launch_options(gen, ssd_path, monkeypatch):
    """``FUSED_ROTATION`` routes ``mamba3(impl="triton")`` to the fused kernel (one launch without gradients);
    a dict of launch options reaches it; off, the kernel is not called."""
    from ssm_edu.kernels import mamba3_ssd, mamba3_ssd_fwd

    calls = []
    plain = mamba3_ssd_fwd.fused_forward
    monkeypatch.setattr(mamba3_ssd_fwd, "fused_forward", lambda *a, **k: calls.append(k) or plain(*a, **k))
    args, kw = inputs(gen, b=1, L=21, H=2, P=8, G=1, N=8)
    ref = mamba3(*args, **kw, impl="naive")
    x = [dev(t) for t in args]
    monkeypatch.setattr(mamba3_ssd, "FUSED_ROTATION", True)
    assert rel_error(mamba3(*x, D=dev(kw["D"]), z=dev(kw["z"]), impl="triton"), ref) < tolerance(torch.float32)
    assert len(calls) == 1
    from ssm_edu.kernels.mamba3 import mamba3_triton

    y = mamba3_triton(*x, D=dev(kw["D"]), z=dev(kw["z"]), path="ssd", fused_rotation=dict(block_q=16))
    assert calls[-1] == dict(block_q=16) and rel_error(y, ref) < tolerance(torch.float32)
    monkeypatch.setattr(mamba3_ssd, "FUSED_ROTATION", False)
    mamba3(*x, D=dev(kw["D"]), z=dev(kw["z"]), impl="triton")
    assert len(calls) == 2


def test_fused_rotation_without_gradients_only(gen, ssd_path, monkeypatch):
    """``FUSED_ROTATION = "no_grad"`` (the default): the fused kernel where no gradient is needed, the rotation
    and SSD's kernels (``_Scan``, never ``_FusedScan``) where one is; both equal to the loop. A value that is
    none of True, False, "no_grad" or a dict is refused, naming the argument."""
    from ssm_edu.kernels import mamba3_ssd, mamba3_ssd_fwd

    assert mamba3_ssd.FUSED_ROTATION == "no_grad"
    calls, scans = [], []
    plain = mamba3_ssd_fwd.fused_forward
    monkeypatch.setattr(mamba3_ssd_fwd, "fused_forward", lambda *a, **k: calls.append(k) or plain(*a, **k))
    for name in ("_Scan", "_FusedScan"):
        cls = getattr(mamba3_ssd, name)
        monkeypatch.setattr(cls, "apply", (lambda f, n: lambda *a: scans.append(n) or f(*a))(cls.apply, name))
    args, kw = inputs(gen, b=1, L=21, H=2, P=8, G=1, N=8)
    ref = mamba3(*args, **kw, impl="naive")
    x = [dev(t) for t in args]
    with torch.no_grad():
        y = mamba3(*x, D=dev(kw["D"]), z=dev(kw["z"]), impl="triton")
    assert rel_error(y, ref) < tolerance(torch.float32) and len(calls) == 1 and scans == []
    xg = [t.clone().requires_grad_() for t in x]
    y = mamba3(*xg, D=dev(kw["D"]), z=dev(kw["z"]), impl="triton")
    assert rel_error(y.detach(), ref) < tolerance(torch.float32) and len(calls) == 1 and scans == ["_Scan"]
    y.sum().backward()
    assert all(t.grad is not None for t in xg)
    from ssm_edu.kernels.mamba3 import mamba3_triton

    with pytest.raises(ValueError, match="fused_rotation"):
        mamba3_triton(*x, path="ssd", fused_rotation="always")


@triton.jit
def _turned_backwards(ptr, rows, t_ok, i, i_ok, N2, cs, sn):
    """``mamba3_ssd_fwd._turned`` with the sine's sign flipped: each pair turned by -Φ."""
    m = t_ok[:, None] & i_ok[None, :]
    e = tl.load(ptr + rows[:, None] + i[None, :], mask=m, other=0.0).to(tl.float32)
    o = tl.load(ptr + rows[:, None] + N2 + i[None, :], mask=m, other=0.0).to(tl.float32)
    return e * cs + o * sn, o * cs - e * sn


@pytest.mark.skipif(ON_GPU, reason="swaps a jitted helper, which the interpreter looks up at every call")
def test_fused_forward_check_can_fail(gen, monkeypatch):
    """The checks above can fail: the kernel with the sine's sign flipped in its turn of B and C gives a
    wrong y."""
    from ssm_edu.kernels import mamba3_ssd_fwd

    args, kw = inputs(gen, b=1, L=37, H=2, P=3, G=1, N=4, state=True)
    y_ref, _ = mamba3(*args, **kw, return_final_state=True, impl="naive")
    monkeypatch.setattr(mamba3_ssd_fwd, "_turned", _turned_backwards)
    y, _ = fused_run(args, kw, torch.float32, 16)
    assert rel_error(y, y_ref) > 100 * tolerance(torch.float32)


# ---------------------------------------------------------------- the rotation's backward, one program per heads


class _Launches:
    """A stand-in for a jitted kernel that counts its launches (the interpreter looks the kernel up at each
    call of its launcher) and passes them on."""

    def __init__(self, kernel):
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.kernel[grid]


def _rotation_reference(B, C, theta, dt, r, psi0, gk, gq, gpsi, H, Q):
    """Float64 autograd through the rotation: dB, dC, dθ, dΔ, dr, dΦ_{-1}, and the boundary sums of dΦ
    (b, H, cdiv(L, Q), N/2) that SSD's backward would hand to ``_rotate_backward`` (dΦ_T included)."""
    G = B.shape[2]
    leaves = [t.double().requires_grad_() for t in (B, C, theta, dt, r, psi0)]
    Bd, Cd, thd, dtd, rd, p0 = leaves
    phi = cumulative_angle(dtd, thd, p0)  # (b, L, H, N/2)
    heads = lambda M: M.repeat_interleave(H // G, dim=2)[:, :, :, None]  # noqa: E731
    k = rotate_pairs(heads(Bd), phi[:, :, :, None])[:, :, :, 0] * rd[..., None]
    q = rotate_pairs(heads(Cd), phi[:, :, :, None])[:, :, :, 0]
    phi.retain_grad()
    loss = (k * gk.double()).sum() + (q * gq.double()).sum()
    if gpsi is not None:
        loss = loss + (phi[:, -1] * gpsi.double()).sum()
    loss.backward()
    after = phi.grad.flip(1).cumsum(1).flip(1)  # Σ_{s>=t} dΦ_s
    bounds = after[:, ::Q].permute(0, 2, 1, 3).float().contiguous()
    return [t.grad for t in leaves], bounds


@pytest.mark.parametrize("angles", [True, False], ids=["angles", "no-angles"])
@pytest.mark.parametrize("G", [1, 2], ids=["G1", "G2"])
def test_rotation_backward_head_loop(G, angles, gen):
    """``_rotate_bwd_heads`` (rotate=dict(bwd_heads=k): one program per (batch, group, block of k heads), dB
    and dC summed over the heads in registers) against the launch per head (``_rotate_bwd``, atomics), within
    1e-6 in float32 (the same arithmetic, but the order of the heads' sums), and against float64 autograd;
    all the group's heads (plain stores) and, for G = 1, blocks of 2 (atomic sums); with and without an
    initial angle and the final angle's gradient; batch 1, L = 37 (not a multiple of the tile), N/2 = 3;
    dL/dk̃ in 3 parts and dL/dq in 1 (as SSD's backward hands them over) or none, joined rows and even/odd
    loads."""
    from ssm_edu.kernels import mamba3_ssd

    b, L, H, N = 1, 37, 4, 6
    rnd = lambda *s: torch.randn(*s, generator=gen).to(DEVICE)  # noqa: E731
    B, C, theta, r = rnd(b, L, G, N), rnd(b, L, G, N), rnd(b, L, H, N // 2), rnd(b, L, H)
    dt, psi0 = rnd(b, L, H).abs(), rnd(b, H, N // 2) if angles else torch.zeros(b, H, N // 2, device=DEVICE)
    gk, gq, gpsi = rnd(b, L, 3, H, N), rnd(b, L, 1, H, N), rnd(b, H, N // 2) if angles else None
    BLOCK_L, BLOCK_I = mamba3_ssd._blocks(N // 2, 16)
    ref, bounds = _rotation_reference(B, C, theta, dt, r, psi0, gk.sum(2), gq.sum(2), gpsi, H, BLOCK_L)
    *_, psi_tiles = mamba3_ssd._rotate_forward(B, C, theta, dt, r, psi0 if angles else None, torch.float32,
                                               BLOCK_L, BLOCK_I)
    counted = _Launches(mamba3_ssd._rotate_bwd_heads)

    def run(heads, form="joined", k=gk, q=gq):
        return mamba3_ssd._rotate_backward(B, C, theta, dt, r, psi_tiles, k, q, gpsi, BLOCK_L, BLOCK_I,
                                           bounds=bounds, Q=BLOCK_L, form=dict(form=form, bwd_heads=heads))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mamba3_ssd, "_rotate_bwd_heads", counted)
        one = run(1)
        assert counted.grids == [], "one head a program: the launch per head"
        runs = [(H // G, "joined"), (H // G, "tiles")] + ([(2, "joined")] if G == 1 else [])
        for heads, form in runs:
            got = run(heads, form)
            assert counted.grids[-1] == (b * G * (H // G // heads), 1, -(-L // BLOCK_L)), counted.grids
            for name, a, o, e in zip(("B", "C", "theta", "dt", "r", "psi0"), got, one, ref):
                if name == "psi0" and not angles:
                    continue
                assert rel_error(a, o) < 1e-6, f"d{name}, {heads} heads {form}: {rel_error(a, o):.3g} from one head"
                assert rel_error(a, e) < tolerance(torch.float32), f"d{name}, {heads} heads {form}: float64"
        if G == 1:  # no dL/dq: nothing read, zero (as the launch per head)
            for name, a, o in zip(("B", "C", "theta", "dt", "r", "psi0"), run(H, q=None), run(1, q=None)):
                assert rel_error(a, o) < 1e-6, f"d{name} without dL/dq: {rel_error(a, o):.3g}"
        with pytest.raises(ValueError, match="must divide the heads per group"):
            run(3)


@pytest.mark.parametrize("G,state", [(1, True), (2, False)], ids=["G1-state", "G2-no-state"])
def test_rotation_backward_head_loop_through_the_path(G, state, gen, ssd_path, monkeypatch):
    """The path's gradients (mamba3_ssd, every input; with ``state`` an initial state and angle and the final
    ones' gradients) with ``ROT_BWD_HEADS`` on and all the group's heads a program, against the launch per head
    (within 1e-6) and against the float64 loop; and the automatic rule's choices."""
    from ssm_edu.kernels import mamba3_ssd

    b, L, H, P, N, chunk = 1, 37, 4, 3, 6, 16
    args, kw = inputs(gen, b=b, L=L, H=H, P=P, G=G, N=N, R=None, state=True)
    wy = torch.randn(args[0].shape, generator=gen)
    ref = grads("naive", args, kw, wy, F64, chunk, state, final=state)
    one = grads("triton", args, kw, wy, torch.float32, chunk, state, final=state, path="ssd",
                rotate=dict(bwd_heads=1))
    counted = _Launches(mamba3_ssd._rotate_bwd_heads)
    monkeypatch.setattr(mamba3_ssd, "_rotate_bwd_heads", counted)
    monkeypatch.setattr(mamba3_ssd, "ROT_BWD_HEADS", True)
    monkeypatch.setattr(mamba3_ssd, "_auto_heads", lambda hpg, grid, device: hpg)  # the rule, at any size
    got = grads("triton", args, kw, wy, torch.float32, chunk, state, final=state)
    assert len(counted.grids) == 1 and counted.grids[0][0] == b * G, counted.grids
    for name, g, o, e in zip(NAMES, got, one, ref):
        if e is None:
            continue
        assert rel_error(g, o) < 1e-6, f"d{name}: {rel_error(g, o):.3g} from one head a program"
        assert grad_error(g, e) < tolerance(torch.float32), f"d{name}: {grad_error(g, e):.3g}"
    monkeypatch.undo()
    meta = torch.device("meta")  # 132 SMs, as an H200
    assert mamba3_ssd._auto_heads(32, 4 * 4 * 64, meta) == 32  # the goal shape: 1024 programs, all heads
    assert mamba3_ssd._auto_heads(32, 64, meta) == 2  # halved until 4 programs an SM (528)
    assert mamba3_ssd._auto_heads(3, 8, meta) == 3
