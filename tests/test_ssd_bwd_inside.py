"""The chunk kernel's input side with dL/dX̄'s two parts joined by an FMA (kernels/ssd.py, ``dxb_apart``).

``_chunk_head``'s DXB_APART adds the states' part exp(α - a⁺_s) B dSᵀ to (M ∘ C Bᵀ)ᵀ dY as one fused
multiply-add instead of an addition, which Triton folded into the product as its accumulator: a chained
product, which at the goal shape's P blocks of 64 spilled in the head loop (benchmarks/notes/ssd.md). The same
function with one rounding less: compiled, dx, dΔ and dt_bias within float32 rounding of the launch without it
and every other gradient equal; in the interpreter (whose fma is a product and a sum) every gradient equal; and
everything within API.md's 1e-5 of the float64 loop. Several heads per program (``n_split=1``, the programs
that ``INPUT_SIDE_P`` is for), groups, L not a multiple of the chunk, one and two blocks of P, both sides in one
launch, and Mamba-3's call (one head per program, runs of chunks, ``ddt_decay_only``, ``turns``).
"""

import pytest
import torch

from ssm_edu import rel_error
from ssm_edu.numerics import tolerance

from test_ssd_bwd import ALL, DEVICE, ON_GPU, assert_close, grads, make, reference
from test_ssd_bwd_chunks import mamba3_call, with_knobs

# (b, L, H, P, G, N, options, knobs); chunks of 16, 2 to 6 heads per program, about 1-3 thousand elements of x
CASES = [
    ((1, 45, 4, 5, 2, 6, ALL), dict(n_split=1)),  # 3 chunks, the last of 13; every option
    ((2, 37, 6, 7, 1, 4, dict(D="h", bias=True)), dict(n_split=1)),  # one group of 6 heads, batch 2
    ((1, 37, 3, 20, 1, 5, dict(softplus=True)), dict(n_split=1, block_p=16)),  # two blocks of P (pb = 1)
    ((1, 45, 4, 5, 2, 6, dict(D="hp", z=True)), dict(n_split=1, sides="fused")),  # both sides in one launch
]


ROUNDING = 1e-6  # float32: one rounding less in the sum, and compiled, products that round a few elements otherwise


@pytest.fixture
def launches(monkeypatch):
    """The DXB_APART of every input-side launch of the chunk kernel (the interpreter cannot tell the FMA from a
    product and a sum, so the tests check that the knob reaches the kernel)."""
    from ssm_edu.kernels import ssd as kernel

    seen, plain = [], kernel._ssd_bwd_chunk

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                if kwargs["SIDE"] != 1:
                    seen.append(kwargs["DXB_APART"])
                return plain[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(kernel, "_ssd_bwd_chunk", Spy())
    return seen


def assert_rounding(got, ref, label):
    """Equal to the launch without DXB_APART: bit for bit in the interpreter, compiled within 1e-6 (dx, dΔ and
    dt_bias by the FMA's rounding, the rest by the products')."""
    assert set(got) == set(ref), label
    for name in ref:
        err = float(rel_error(got[name], ref[name]))
        assert torch.equal(got[name], ref[name]) if not ON_GPU else err < ROUNDING, f"{label}: {name!r} error {err:.3g}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c[0][:6])) + "-" + "-".join(c[1]))
def test_dxb_apart(case, monkeypatch, launches):
    (*dims, options), knobs = case
    args, kw = make(*dims, seed=sum(dims), **options)
    ref, low, low_kw = reference(args, kw, torch.float32)
    today, got = {}, {}
    for apart, out in ((False, today), (True, got)):
        with pytest.MonkeyPatch.context() as mp:
            with_knobs(mp, dxb_apart=apart, **knobs)
            out.update(grads("triton", torch.float32, low, low_kw, DEVICE))
    assert launches == [False, True], launches
    assert_rounding(got, today, "dxb apart")
    assert_close(got, ref, tolerance(torch.float32), "dxb apart")


def test_dxb_apart_mamba3_path(launches):
    """As kernels/mamba3_ssd.py calls ssd_bwd (G = H = 2, one head per program, runs of 2 chunks over 5, Δ's
    part through the decays only): every output within float32 rounding of the launch without DXB_APART."""
    args, kw = make(1, 70, 2, 5, 2, 6, seed=31, D="h", h0=True, final=True)
    low = [a.float().double() for a in args]
    low_kw = {k: (v.float().double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    weights = torch.cos(low[0]), torch.sin(low_kw["initial_states"])  # of y and of the final state: fixed
    got, today = (mamba3_call(low, low_kw, *weights, chunks_per_program=2, dxb_apart=a) for a in (True, False))
    drop = lambda out: {k: v.double() for k, v in out.items() if k != "chunk"}  # noqa: E731
    assert_rounding(drop(got), drop(today), "dxb apart")
    assert launches == [True, False], launches


def test_dxb_apart_setting(monkeypatch, launches):
    """``INPUT_SIDE_DXB_APART`` is what ``dxb_apart=None`` launches (off until timed on a GPU)."""
    from ssm_edu.kernels import ssd as kernel

    assert kernel.INPUT_SIDE_DXB_APART is False
    args, kw = make(1, 20, 2, 3, 1, 4, seed=3)
    f32 = [a.float().to(DEVICE) for a in args]
    dy = torch.ones_like(f32[0])
    kernel.ssd_bwd(dy, None, *f32, chunk_size=16, n_split=1)
    monkeypatch.setattr(kernel, "INPUT_SIDE_DXB_APART", True)
    kernel.ssd_bwd(dy, None, *f32, chunk_size=16, n_split=1)
    kernel.ssd_bwd(dy, None, *f32, chunk_size=16, n_split=1, dxb_apart=False)
    assert launches == [False, True, False], launches
