"""The first Triton selective scan and its next rung (kernels/selective_first.py, chapter 7), tested like
every tier: against the float64 loop on odd sizes, with and without the options, groups, L = 1 and batch 1;
in the interpreter on CPU, compiled (and in bfloat16, and long) on a GPU."""

import pytest
import torch

import ssm_edu
from ssm_edu import selective_scan
from ssm_edu.kernels.selective_first import selective_scan_blocked, selective_scan_first
from ssm_edu.numerics import rel_error, tolerance

DEVICE = ssm_edu.default_device()
ON_GPU = DEVICE.type == "cuda"
FIRST = [selective_scan_first, selective_scan_blocked]


def inputs(batch, D, L, N, G=None, seed=0, options=True):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    BC = (batch, N, L) if G is None else (batch, G, N, L)
    t = dict(u=r(batch, D, L), delta=0.5 * r(batch, D, L), A=-(0.5 + torch.rand(D, N, generator=gen, dtype=torch.float64)),
             B=r(*BC), C=r(*BC))
    kw = dict(D=r(D), z=r(batch, D, L), delta_bias=0.3 * r(D), delta_softplus=True) if options else {}
    if not options:
        t["delta"] = t["delta"].abs()
    return t, kw


# L = 13: not a multiple of the blocks of steps; D = 6 in 2 groups of 3: of no channel block; N = 5
CASES = [(1, 1, 1, 1, None), (2, 6, 13, 5, 2), (1, 3, 17, 16, None), (3, 4, 9, 2, 4)]
if ON_GPU:
    CASES += [(2, 64, 1000, 16, None), (1, 96, 257, 16, 3)]


@pytest.mark.parametrize("fn", FIRST, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("options", [True, False])
def test_first_kernels_match_the_loop(fn, case, options):
    args, kw = inputs(*case, options=options)
    ref_y, ref_h = selective_scan(**args, **kw, return_last_state=True, impl="naive")
    dev = {k: v.to(DEVICE, torch.float32) for k, v in args.items()}
    kwd = {k: (v.to(DEVICE, torch.float32) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    y, h = fn(**dev, **kwd, return_last_state=True)
    assert y.shape == ref_y.shape and h.shape == ref_h.shape and y.dtype == torch.float32
    assert rel_error(y.cpu(), ref_y) < tolerance(torch.float32), f"y {rel_error(y.cpu(), ref_y):.2e}"
    assert rel_error(h.cpu(), ref_h) < tolerance(torch.float32), f"h {rel_error(h.cpu(), ref_h):.2e}"


@pytest.mark.skipif(not ON_GPU, reason="bfloat16 inputs: on a GPU (the interpreter computes in float32)")
@pytest.mark.parametrize("fn", FIRST, ids=lambda f: f.__name__)
def test_first_kernels_bf16(fn):
    args, kw = inputs(2, 64, 600, 16, 2)
    low = {k: (v.to(torch.bfloat16) if k not in ("A",) else v.float()) for k, v in args.items()}
    kwl = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    ref = selective_scan(**{k: v.double() for k, v in low.items()}, **{k: (v.double() if isinstance(v, torch.Tensor) else v)
                                                                       for k, v in kwl.items()}, impl="naive")
    y = fn(**{k: v.to(DEVICE) for k, v in low.items()}, **{k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v)
                                                              for k, v in kwl.items()})
    assert y.dtype == torch.bfloat16 and rel_error(y.cpu(), ref) < tolerance(torch.bfloat16)
