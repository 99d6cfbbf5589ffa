"""The first SSD kernel (kernels/ssd_first.py) and the ladder's rungs (kernels/ssd_ladder.py).

Each rung computes ssd with Δ = dt as given and no options: against the float64 loop on the same
rounded inputs, in float32 (1e-5) and, on a GPU, bfloat16 (2e-2); L = 1, L not a multiple of the
chunk of 64, odd P and N, groups, batch 1. The interpreter runs them on a CPU; a GPU compiles them.
"""

import pytest
import torch

import ssm_edu
from ssm_edu import rel_error, ssd
from ssm_edu.numerics import tolerance

DEVICE = ssm_edu.default_device()
ON_GPU = DEVICE.type == "cuda"
# (b, L, H, P, G, N)
SHAPES = [(1, 1, 1, 1, 1, 1), (2, 70, 4, 5, 2, 3), (1, 130, 2, 17, 1, 20)]
if ON_GPU:
    SHAPES += [(2, 1000, 8, 64, 1, 128), (1, 4097, 4, 64, 2, 64), (3, 300, 6, 48, 3, 40)]
DTYPES = [torch.float32] + ([torch.bfloat16] if ON_GPU else [])


def rungs():
    from ssm_edu.kernels.ssd_ladder import RUNGS

    return {name: fn for name, _, _, fn, _ in RUNGS}


def inputs(b, L, H, P, G, N, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, H, P, generator=gen)
    dt = 0.05 + 0.5 * torch.rand(b, L, H, generator=gen)  # Δ > 0, as given
    A = -(0.2 + 2 * torch.rand(H, generator=gen))
    B, C = (0.5 * torch.randn(b, L, G, N, generator=gen) for _ in range(2))
    return [x.to(dtype), dt, A, B.to(dtype), C.to(dtype)]


@pytest.mark.heavy  # 8-34 s a case in the GPU test phase of 2026-12-07, the longest after four now gone
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_ladder_rungs_agree_with_the_loop(shape, dtype):
    args = inputs(*shape, dtype)
    # the loop at the sizes that also run on a CPU, the chunked form on the device at the GPU's (it equals the
    # loop in float64: tests/test_ssd.py's test_ssd_tiers_agree)
    small = shape[1] <= 130
    ref = ssd(*(a.to("cpu" if small else DEVICE, torch.float64) for a in args), impl="naive" if small else "vectorized")
    for name, fn in rungs().items():
        y = fn(*(a.to(DEVICE) for a in args))
        assert y.dtype == dtype and y.shape == ref.shape, name
        err = rel_error(y, ref)
        assert err < tolerance(dtype), f"{name}: relative error {err:.3g}"


def test_first_kernel_source_fits_the_page():
    """Chapter 8 prints the first kernel and a rung's diff: 40-80 lines, none wider than 88 characters."""
    import inspect

    from ssm_edu.kernels import ssd_first, ssd_ladder

    kernel = inspect.getsource(ssd_first.ssd_first_kernel.fn) + inspect.getsource(ssd_first.ssd_first)
    assert 40 <= len(kernel.splitlines()) <= 80
    for module in (ssd_first, ssd_ladder):
        wide = [line for line in inspect.getsource(module).splitlines() if len(line) > 88]
        assert not wide, wide


def test_chunk_cb_equals_the_pytorch_form():
    from ssm_edu.kernels.ssd_ladder import chunk_cb
    from ssm_edu.ssd import ssd_chunk_cb

    _, _, _, B, C = inputs(2, 70, 1, 1, 2, 5, torch.float32)
    ref = ssd_chunk_cb(B.double(), C.double(), 64)
    assert ref.shape == (2, 2, 2, 64, 64)
    assert rel_error(chunk_cb(B.to(DEVICE), C.to(DEVICE)), ref) < 1e-6


def test_sweep_log_reader_on_the_dry_run_fixture():
    """Chapter 8 reads the GPU sweep's log; the fixture is a dry run of benchmarks/sweep_ssd.py in the
    interpreter (SSD_DRY=1), never book data: the default reader skips it."""
    import pathlib

    from ssm_edu.kernels.ssd_ladder import RUNGS
    from ssm_edu.ssd import ssd_ladder_log, ssd_ladder_rows

    log = ssd_ladder_log(pathlib.Path(__file__).parent / "data" / "sweep_ssd_dry.json")
    assert log["dry"] and log["shape"]
    rows = ssd_ladder_rows(log)
    assert [r["name"] for r in rows] == [name for name, *_ in RUNGS]
    assert all(r["us"] > 0 and r["status"] == "ok" for r in rows)
    assert {e["group"] for e in log["entries"]} >= {"ladder", "fwd+bwd", "backward", "forward"}
    default = ssd_ladder_log()
    assert default is None or not default["dry"]


def test_the_committed_gpu_log_times_every_rung_and_the_peer():
    """Chapter 8's ladder reads the newest GPU log: every rung of RUNGS measured at the goal shape, with its
    floor, and mamba_ssm's forward beside them (the figure's dotted line)."""
    from ssm_edu.kernels.ssd_ladder import RUNGS
    from ssm_edu.ssd import ssd_ladder_log, ssd_ladder_rows

    log = ssd_ladder_log()
    if log is None:
        pytest.skip("no GPU log of benchmarks/sweep_ssd.py in this copy")
    assert log["device"] and log["torch"] and log["triton"] and log["date"] and log["shape"]
    rows = ssd_ladder_rows(log)
    assert [r["name"] for r in rows] == [name for name, *_ in RUNGS]
    assert all(r["us"] and r["fraction"] and r["status"] == "ok" for r in rows)
    assert [e["median_us"] for e in log["entries"] if e["name"] == "mamba_ssm fwd" and e.get("median_us")]
