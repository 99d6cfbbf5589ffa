"""Where the time of a benchmark row goes: the GPU kernels of one call, from ``torch.profiler``.

    python benchmarks/profile_ops.py [CASE ...] [--json FILE]

CASE (all by default): ``selective`` (the selective scan's forward and forward plus backward at
chapter 7's goal shape, as the suite times them), ``ssd`` (chapter 8's goal shape), ``mamba3``
(chapter 9's SISO goal shape: the path through SSD with each form of its rotation and with the
rotation fused into its forward, and the fused kernel; forward plus backward through SSD). Each closure runs once to compile, then three times under
the profiler; the table gives, per kernel (or PyTorch operation on the CPU), the time per call, how
many launches a call makes, and the name. The first line of each case also gives the closure's median
by ``triton.testing.do_bench`` (on a GPU), so that the kernels' sum can be set against it: a sum well
below the median is time between the kernels (launches, the host).

It found, on an H100 (2026-12-07), that the selective scan's backward ran 2.4 times slower inside
autograd than alone (an unused last state's gradient, materialised as zeros, picked a slower
specialisation of the kernel), and that Mamba-3's rotation took 2374 of its path's 2921 us.

Without a GPU the same cases run at tiny shapes in Triton's interpreter (a check that the script
works; the times are the interpreter's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import benchmarks.suite  # noqa: E402,F401  (registers the ops; benchmarks.selective imports it first otherwise)
import ssm_edu  # noqa: E402
from benchmarks.mamba3 import mamba3_inputs  # noqa: E402
from benchmarks.selective import fwd_bwd, scan_inputs  # noqa: E402
from benchmarks.ssd import ssd_inputs  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")
SHAPES = {  # the chapters' goal shapes on a GPU; tiny ones for the interpreter
    "selective": (8, 2048, 2048, 16) if GPU else (1, 4, 16, 4),
    "ssd": (4, 4096, 128, 64, 128, 1) if GPU else (1, 32, 2, 4, 4, 1),
    "mamba3": (4, 4096, 32, 64, 128, 1) if GPU else (1, 16, 2, 4, 4, 1),
}


class _Ctx:
    device = DEVICE


def cases(names):
    """(label, closure) pairs of the named cases."""
    dtype = torch.bfloat16 if GPU else torch.float32
    if "selective" in names:
        ts = scan_inputs(_Ctx, *SHAPES["selective"], dtype, requires_grad=True)
        u, delta, A, B, C, D, z, bias = ts

        def scan():
            return ssm_edu.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,
                                          impl="triton")
        yield "selective fwd", scan, False
        yield "selective fwd+bwd", fwd_bwd(scan, ts), True
    if "ssd" in names:
        ts = ssd_inputs(_Ctx, *SHAPES["ssd"], dtype, requires_grad=True)
        x, dt, A, B, C, D = ts

        def run_ssd():
            return ssm_edu.ssd(x, dt, A, B, C, D=D, impl="triton")
        yield "ssd fwd", run_ssd, False
        yield "ssd fwd+bwd", fwd_bwd(run_ssd, ts), True
    if "mamba3" in names:
        from ssm_edu.kernels.mamba3 import mamba3_triton

        ts, _ = mamba3_inputs(DEVICE, *SHAPES["mamba3"], dtype=dtype, requires_grad=True)
        args = [ts[k] for k in ("x", "dt", "A", "B", "C", "lam", "theta")]
        forms = [(f"through SSD, rotation {form}", dict(path="ssd", rotate=form)) for form in ("tiles", "joined")]
        forms.append(("through SSD, fused rotation", dict(path="ssd", fused_rotation=True)))
        for label, kw in forms + [("fused kernel", dict(path="fused"))]:
            yield f"mamba3 fwd {label}", (lambda kw=kw: mamba3_triton(*args, D=ts["D"], **kw)), False
        for label, kw in forms:
            fn = lambda kw=kw: mamba3_triton(*args, D=ts["D"], **kw)  # noqa: E731
            yield f"mamba3 fwd+bwd {label}", fwd_bwd(fn, list(ts.values())), True


def profile(fn, reps=3):
    """Per-call time of each kernel (GPU) or operation (CPU) -> (rows, total per call), rows sorted."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()  # compiles
    if GPU:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if GPU else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(reps):
            fn()
        if GPU:
            torch.cuda.synchronize()
    events = prof.key_averages()
    if GPU:  # kernels only: self device time of the events that ran on the GPU
        rows = [(e.self_device_time_total / reps, e.count // reps, e.key) for e in events
                if e.self_device_time_total > 0 and e.device_type == torch.autograd.DeviceType.CUDA]
    else:
        rows = [(e.self_cpu_time_total / reps, e.count // reps, e.key) for e in events if e.self_cpu_time_total > 0]
    rows.sort(key=lambda r: -r[0])
    return rows, sum(r[0] for r in rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", help=f"which of {', '.join(SHAPES)} (default: all)")
    ap.add_argument("--top", type=int, default=12, help="rows per case")
    ap.add_argument("--json", help="also write the tables to this JSON file")
    args = ap.parse_args(argv)
    unknown = set(args.cases) - set(SHAPES)
    if unknown:
        ap.error(f"unknown case(s) {', '.join(sorted(unknown))}; choose from {', '.join(SHAPES)}")
    names = set(args.cases or SHAPES)
    device = torch.cuda.get_device_name() if GPU else "cpu (interpreter, tiny shapes)"
    print(f"{device}, torch {torch.__version__}")
    out = {"device": device, "torch": torch.__version__, "shapes": {k: SHAPES[k] for k in names}, "cases": []}
    for label, fn, grad in cases(names):
        with torch.set_grad_enabled(grad):
            rows, total = profile(fn)
            median = None
            if GPU:
                from triton.testing import do_bench

                median = 1e3 * do_bench(fn, warmup=10, rep=50, return_mode="median")
        head = f"=== {label}: kernels {total:.1f} us per call" + (f", do_bench median {median:.1f} us" if median else "")
        print(head)
        for us, count, name in rows[:args.top]:
            print(f"  {us:10.1f} us  x{count:<3d} {name[:100]}")
        out["cases"].append({"label": label, "median_us": median, "total_us": total,
                             "rows": [{"us": us, "count": count, "name": name} for us, count, name in rows]})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
