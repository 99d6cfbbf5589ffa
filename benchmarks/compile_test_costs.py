"""What the SSD test files' GPU tests need of one core to compile, without a GPU.

    python benchmarks/compile_test_costs.py [ssd] [ssd_bwd]

ssd: tests/test_ssd.py's test_ssd_triton at every shape, option set and dtype it runs on a GPU (forward);
ssd_bwd: tests/test_ssd_bwd.py's float32 and half-precision gradient tests, the chunk-size test and the 2^18
case (forward and backward). Their launchers run on meta tensors for an H100's 132 SMs and their launches are
recorded (``sweep_ssd.record_ssd_launches``); each distinct specialisation (kernel, argument types,
divisibility, constexprs, warps, stages: what the JIT compiles once) is compiled for sm_90 once, in a fresh
Triton cache, and timed. Prints one line per test case and the totals (benchmarks/README.md, the test phase's
cost file by file: 81 specialisations in 54-56 s and 109 in 65-66 s on one core of a CPU machine, Triton 3.7.1).
"""
import os
import sys
import tempfile
import time

os.environ["TRITON_INTERPRET"] = "0"  # before the kernels are imported: compile, never interpret
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile_test_costs_")  # every compile timed afresh
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "benchmarks"), os.path.join(ROOT, "tests"), ROOT]

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import sm90  # noqa: E402
from sweep_ssd import record_ssd_launches  # noqa: E402


def launches(b, L, H, P, G, N, chunk, dtype, options, backward):
    """The recorded launches of one test case: ssd_fwd (with y before the gate when z is given), then ssd_bwd."""
    from ssm_edu.kernels import ssd as kernel

    m = dict(device="meta")
    low = {} if dtype == torch.float32 else dict(dtype=dtype)
    x = torch.empty(b, L, H, P, dtype=dtype, **m)
    dt, A = torch.empty(b, L, H, **m, **low), torch.empty(H, **m, **low)
    B, C = torch.empty(b, L, G, N, dtype=dtype, **m), torch.empty(b, L, G, N, dtype=dtype, **m)
    kw = {}
    if options.get("D"):
        kw["D"] = torch.empty(H, **m) if options["D"] == "h" else torch.empty(H, P, **m)
    if options.get("z"):
        kw["z"] = torch.empty_like(x)
    if options.get("bias"):
        kw["dt_bias"] = torch.empty(H, **m)
    if options.get("h0"):
        kw["initial_states"] = torch.empty(b, H, P, N, **m)
    softplus, final = options.get("softplus", False), options.get("final", False)

    def run():
        kernel.ssd_fwd(x, dt, A, B, C, chunk, dt_softplus=softplus, return_final_states=final,
                       return_pre_gate="z" in kw, **kw)
        if backward:
            dhT = torch.empty(b, H, P, N, dtype=dtype, **m) if final else None
            kernel.ssd_bwd(torch.empty_like(x), dhT, x, dt, A, B, C, chunk, dt_softplus=softplus,
                           y_pre=kw.get("z"), **kw)

    return record_ssd_launches(run)


def cases(which):
    """(label, b, L, H, P, G, N, chunk, dtype, options, backward) for each test case of ``which``."""
    if which == "ssd":
        import test_ssd as t

        return [(f"{s} {'all' if o else 'plain'} {d}", *s, d, o, False)
                for s in t.TRITON_SHAPES + t.GPU_SHAPES for o in (t.OPTIONS[0], t.OPTIONS[-1])
                for d in (torch.float32, torch.bfloat16, torch.float16)]
    import test_ssd_bwd as t

    every = t.CASES + t.GPU_CASES
    out = [(f"float32 {c[:7]}", *c[:7], torch.float32, c[7], True) for c in every]
    out += [(f"bfloat16 {c[:7]}", *c[:7], torch.bfloat16, c[7], True) for c in [every[3]] + t.GPU_CASES]
    out += [(f"float16 {t.GPU_CASES[0][:7]}", *t.GPU_CASES[0][:7], torch.float16, t.GPU_CASES[0][7], True)]
    out += [(f"chunk {q}", 1, 70, 2, 8, 1, 16, q, torch.float32, t.ALL, True) for q in (1, 16, 32, 100)]
    out += [("L = 2^18 + 37", 1, (1 << 18) + 37, 1, 32, 1, 16, 64, torch.float32, {}, True)]
    return out


def main(argv):
    for which in argv or ["ssd", "ssd_bwd"]:
        seen, total = {}, 0.0
        for label, *case in cases(which):
            new = 0.0
            for fn, grid, args, kwargs in launches(*case):
                sig, ce, attrs, warps, stages = sm90.launch_signature(fn, args, kwargs)
                key = (fn.fn.__name__, str(sorted(sig.items())), str(sorted((k, str(v)) for k, v in ce.items())),
                       str(sorted(attrs.items())), warps, stages)
                if key not in seen:
                    t0 = time.perf_counter()
                    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=ce, attrs=attrs),
                                   target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
                    seen[key] = time.perf_counter() - t0
                    new += seen[key]
            total += new
            print(f"{which:8s} {label:48s} new compiles {new:5.1f} s", flush=True)
        print(f"{which}: {len(seen)} distinct specialisations, {total:.1f} s to compile on one core", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
