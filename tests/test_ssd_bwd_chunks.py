"""ssd_bwd's chunk kernel with several chunks per program (kernels/ssd.py, ``chunks_per_program``).

Where a program of ``_ssd_bwd_chunk`` has one head (one group per head, G = H, as on Mamba-3's path, or
``n_split`` = H / G), it can walk several chunks of that head in turn. Every gradient against the one-chunk
launch (the same arithmetic per chunk: equal in the interpreter) and against the float64 loop (API.md's
1e-5 for float32). Runs of 2, 3 and 4 over 3 or 5 chunks (a last run shorter than the rest), L not a multiple
of the chunk, batch 1 and 2; also as Mamba-3's path calls it (``turns``, ``ddt_decay_only``).
"""

import pytest
import torch

import ssm_edu
from ssm_edu import rel_error, ssd
from ssm_edu.numerics import tolerance

from test_ssd_bwd import ALL, DEVICE, F64, assert_close, grads, make, reference

EXACT = not DEVICE.type == "cuda"  # the interpreter: the same operations in the same order, bit for bit


def with_knobs(monkeypatch, **knobs):
    """Route ssd(impl="triton")'s backward through ssd_bwd with these launch parameters."""
    from ssm_edu.kernels import ssd as kernel

    plain = kernel.ssd_bwd
    monkeypatch.setattr(kernel, "ssd_bwd", lambda *a, **k: plain(*a, **k, **knobs))


def assert_same(got, ref, label):
    """Equal to the one-chunk launch: bit for bit in the interpreter; compiled, within 1e-6 in float32 and 1e-3
    in half precision (a product summed in another order may round a few elements the other way)."""
    assert set(got) == set(ref), label
    for name in ref:
        if EXACT:
            assert torch.equal(got[name], ref[name]), f"{label}: {name!r} differs"
        else:
            err = rel_error(got[name].float(), ref[name].float())
            tol = 1e-6 if got[name].dtype == torch.float32 else 1e-3
            assert err < tol, f"{label}: {name!r} relative error {err:.3g}"


# (b, L, H, P, G, N, chunk, options, n_split): chunks of 16; 5 chunks (L = 70) or 3 (L = 45)
CASES = [
    ((1, 70, 2, 5, 2, 6, 16, {}), None),  # G = H, batch 1, 5 chunks: runs of 2 (2, 2, 1), 3 (3, 2), 4 (4, 1)
    ((2, 45, 2, 3, 2, 4, 16, ALL), None),  # G = H, every option (D per head dim, z, dt_bias, softplus, h0, hT)
    ((1, 70, 4, 5, 2, 6, 16, dict(D="h", bias=True)), 2),  # G < H, one head per split: n_split = H / G
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0][:7]}-split{c[1]}")
def case(request):
    (*dims, chunk, options), n_split = request.param
    args, kw = make(*dims, seed=sum(dims), chunk=chunk, **options)
    ref, low, low_kw = reference(args, kw, torch.float32)
    return ref, low, low_kw, ({} if n_split is None else dict(n_split=n_split))


@pytest.fixture(scope="module")
def one_chunk(case):
    """The gradients with one chunk per program (the launch as it was)."""
    ref, low, low_kw, split = case
    mp = pytest.MonkeyPatch()
    try:
        with_knobs(mp, chunks_per_program=1, **split)
        return grads("triton", torch.float32, low, low_kw, DEVICE)
    finally:
        mp.undo()


@pytest.mark.parametrize("chunks", [1, 2, 3, 4])
def test_chunks_per_program(chunks, case, one_chunk, monkeypatch):
    """Every gradient (x, dt, A, B, C and those of the options) against the one-chunk launch and the loop."""
    ref, low, low_kw, split = case
    with_knobs(monkeypatch, chunks_per_program=chunks, **split)
    got = grads("triton", torch.float32, low, low_kw, DEVICE)
    assert_same(got, one_chunk, f"{chunks} chunks per program")
    assert_close(got, ref, tolerance(torch.float32), f"{chunks} chunks per program")


def test_fused_sides(case, one_chunk, monkeypatch):
    """Both sides in one launch (``sides="fused"``), 2 chunks per program."""
    ref, low, low_kw, split = case
    with_knobs(monkeypatch, chunks_per_program=2, sides="fused", **split)
    got = grads("triton", torch.float32, low, low_kw, DEVICE)
    assert_close(got, ref, tolerance(torch.float32), "fused")


def test_several_heads_per_program_refuse_runs():
    """Runs of chunks need one head per program: with 2 heads per split (n_split=1 given: on a GPU the
    automatic split would give each program one head here) the launcher says so."""
    from ssm_edu.kernels.ssd import ssd_bwd

    args, kw = make(1, 20, 4, 3, 2, 4, seed=1)
    f32 = [a.float().to(DEVICE) for a in args]
    with pytest.raises(ValueError, match="n_split=2"):
        ssd_bwd(torch.ones_like(f32[0]), None, *f32, chunk_size=16, n_split=1, chunks_per_program=2)


def mamba3_call(args, kw, wy, wh, **knobs):
    """ssd_bwd as kernels/mamba3_ssd.py calls it: D, an initial state, ``ddt_decay_only`` and ``turns``."""
    from ssm_edu.kernels.ssd import ssd_bwd

    f32 = lambda t: t.to(DEVICE, torch.float32)  # noqa: E731
    return ssd_bwd(f32(wy), f32(wh), *(f32(t) for t in args), chunk_size=16, D=f32(kw["D"]),
                   initial_states=f32(kw["initial_states"]), ddt_decay_only=True, turns=True, **knobs)


@pytest.mark.parametrize("chunks", [2, 3])
def test_mamba3_path_call(chunks):
    """``turns`` and ``ddt_decay_only`` (G = H = 2, 5 chunks): every output equal to the one-chunk launch's;
    dx, dA, dD, the initial state's gradient and the sums of dB's and dC's parts against the float64 loop,
    and dΔ against the loop with Δ's part as the input's weight held fixed (x' = x Δ.detach() / Δ)."""
    b, L, H, P, N = 1, 70, 2, 5, 6
    args, kw = make(b, L, H, P, H, N, seed=21, D="h", h0=True, final=True)
    gen = torch.Generator().manual_seed(22)
    wy, wh = torch.randn(b, L, H, P, generator=gen, dtype=F64), torch.randn(b, H, P, N, generator=gen, dtype=F64)
    low = [a.float().double() for a in args]
    low_kw = {k: (v.float().double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    got = mamba3_call(low, low_kw, wy, wh, chunks_per_program=chunks)
    one = mamba3_call(low, low_kw, wy, wh, chunks_per_program=1)
    assert_same({k: v for k, v in got.items() if k != "chunk"}, {k: v for k, v in one.items() if k != "chunk"},
                f"{chunks} chunks per program")

    x, dt, A, B, C = (a.clone().requires_grad_() for a in low)
    D, h0 = (low_kw[k].clone().requires_grad_() for k in ("D", "initial_states"))
    y, hT = ssd(x * (dt.detach() / dt)[..., None], dt, A, B, C, initial_states=h0, return_final_states=True,
                impl="naive")
    ((y + D[:, None] * x) * wy).sum().add((hT * wh).sum()).backward()
    ref = dict(dx=x.grad, ddt=dt.grad, dA=A.grad, dB=B.grad, dC=C.grad, dD=D.grad, dinitial_states=h0.grad)
    out = dict(got, dB=got["dB_parts"].sum(2), dC=got["dC_parts"].sum(2))
    assert_close({k: out[k].double().cpu() for k in ref}, ref, tolerance(torch.float32), f"{chunks} chunks")


def test_launcher_rule():
    """The most of 8, 4, 2 chunks per program that leaves 4 programs per SM (132 SMs), else 1."""
    from ssm_edu.kernels.ssd import _chunks_per_program

    assert _chunks_per_program(4 * 32, 64, 132) == 8  # Mamba-3's path shape: B4 L4096 H = G = 32, Q = 64
    assert _chunks_per_program(4 * 32, 32, 132) == 4  # L 2048
    assert _chunks_per_program(32, 64, 132) == 2  # 32 x 32 = 1024 >= 528 > 32 x 16
    assert _chunks_per_program(32, 32, 132) == 1  # 32 chunks of 32 (b, group) pairs: 1024 programs
    assert _chunks_per_program(8, 4, 132) == 1


@pytest.mark.skipif(EXACT, reason="compiled only: at this size the interpreter takes minutes")
def test_launcher_choice_at_the_mamba3_path_shape(monkeypatch):
    """B4 L4096 H = G = 32 P64 N128 bf16 as kernels/mamba3_ssd.py calls ssd_bwd: with ``CHUNK_RUNS`` on the
    launcher picks runs of chunks, and every output matches the one-chunk launch's."""
    from ssm_edu.kernels import ssd as ssd_kernels
    from ssm_edu.kernels.ssd import _chunks_per_program, _num_sms, ssd_bwd

    monkeypatch.setattr(ssd_kernels, "CHUNK_RUNS", True)

    gen = torch.Generator(device=DEVICE).manual_seed(0)
    b, L, H, P, N = 4, 4096, 32, 64, 128
    assert _chunks_per_program(b * H, L // 64, _num_sms(DEVICE)) > 1
    r = lambda *s: torch.randn(*s, device=DEVICE, generator=gen)  # noqa: E731
    x, B, C, dy = r(b, L, H, P).bfloat16(), r(b, L, H, N).bfloat16(), r(b, L, H, N).bfloat16(), r(b, L, H, P).bfloat16()
    dt = 0.01 + 0.1 * torch.rand(b, L, H, device=DEVICE, generator=gen)
    A, D, h0, dhT = -torch.ones(H, device=DEVICE), r(H), r(b, H, P, N), r(b, H, P, N)
    call = lambda **k: ssd_bwd(dy, dhT, x, dt, A, B, C, 64, D=D, initial_states=h0, ddt_decay_only=True,  # noqa
                               turns=True, **k)
    got, one = call(), call(chunks_per_program=1)
    assert_same({k: v for k, v in got.items() if k != "chunk"}, {k: v for k, v in one.items() if k != "chunk"},
                "the launcher's choice")
