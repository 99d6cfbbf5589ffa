"""The selective scan's backward kernel: its default against the knobs that the latency analysis of
benchmarks/notes/selective.md ("H100 run of 2026-12-07") ranks first, on a GPU.

    python benchmarks/time_selective_bwd.py        (no GPU: a dry run in the interpreter, tiny shapes)

At B8 D2048 L2048 N16 (bf16 u, Δ, B, C, z; fp32 A, D, delta_bias; softplus) and B1 D256 L512 N16 (fp32): the
training forward (checkpoints) once, then the backward launcher alone (the kernel and the sums of its dB, dC
partials) for each config, timed by ``triton.testing.do_bench`` (median). Each config's eight gradients are
checked against the default's on the same inputs (bf16 < 2e-2, fp32 < 1e-5) before it is timed. About 40 s on
an H100 (most of it compiling six backward kernels). With OUT set, writes $OUT/time_selective_bwd.json. The
table printed last: one line per shape and config.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import ssm_edu  # noqa: E402
from ssm_edu.kernels.selective import selective_scan_bwd, selective_scan_fwd  # noqa: E402

GPU = torch.cuda.is_available()
SHAPES = [((8, 2048, 2048, 16), torch.bfloat16), ((1, 256, 512, 16), torch.float32)] if GPU else \
    [((1, 8, 16, 8), torch.float32)]
CONFIGS = [("tn4 w1 (default)", {}), ("tn4 w4", dict(tn=4, num_warps=4)), ("tn4 w2", dict(tn=4, num_warps=2)),
           ("tn8 w4", dict(tn=8, num_warps=4)), ("tn8 w2", dict(tn=8, num_warps=2)),
           ("tn8 w1", dict(tn=8, num_warps=1))]
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def inputs(shape, dtype, device):
    b, d, L, n = shape
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x = dict(u=r(b, d, L).to(dtype), delta=(0.5 * r(b, d, L)).to(dtype), A=-(0.5 + torch.rand(d, n, generator=gen)),
             B=r(b, n, L).to(dtype), C=r(b, n, L).to(dtype), D=r(d), z=r(b, d, L).to(dtype), delta_bias=0.3 * r(d))
    return {k: v.to(device) for k, v in x.items()}, r(b, d, L).to(dtype).to(device)


def median_us(fn):
    if not GPU:
        t = time.time()
        fn()
        return 1e6 * (time.time() - t)
    from triton.testing import do_bench

    return 1e3 * do_bench(fn, warmup=10, rep=60, return_mode="median")


def main():
    device = "cuda" if GPU else "cpu"
    rows = []
    for shape, dtype in SHAPES:
        a, gy = inputs(shape, dtype, device)
        opts = dict(D=a["D"], z=a["z"], delta_bias=a["delta_bias"], delta_softplus=True)
        fwd = lambda: selective_scan_fwd(a["u"], a["delta"], a["A"], a["B"], a["C"], **opts,  # noqa: E731
                                         save_checkpoints=True)
        _, _, ck, meta = fwd()
        t_fwd = median_us(fwd)
        tol = ssm_edu.tolerance(dtype)
        ref = None
        for label, knobs in CONFIGS:
            bwd = lambda: selective_scan_bwd(gy, None, ck, meta, a["u"], a["delta"], a["A"], a["B"], a["C"],  # noqa
                                             **opts, **knobs)
            row = dict(shape="B{} D{} L{} N{}".format(*shape), dtype=str(dtype).replace("torch.", ""), label=label,
                       knobs=knobs, fwd_ck_us=t_fwd)
            try:
                grads = dict(zip(NAMES, bwd()))
                if ref is None:
                    ref = grads
                err = max(float(ssm_edu.rel_error(grads[k].float(), ref[k].float())) for k in NAMES)
                row.update(rel_error_vs_default=err, status="ok" if err < tol else "WRONG")
                if err < tol:
                    row["bwd_us"] = median_us(bwd)
            except Exception as e:  # a config that does not compile or run is reported, the others go on
                row.update(status=f"FAILED {type(e).__name__}: {str(e)[:200]}")
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "time_selective_bwd.json"), "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name() if GPU else "cpu (dry run)", torch=torch.__version__,
                           triton=__import__("triton").__version__, rows=rows), f, indent=1)
    print(f"---- {torch.cuda.get_device_name() if GPU else 'cpu (dry run)'}, backward launcher alone (median us)")
    for r in rows:
        base = next(x for x in rows if x["shape"] == r["shape"] and x["label"] == CONFIGS[0][0])
        speed = f"{base['bwd_us'] / r['bwd_us']:.2f}x" if r.get("bwd_us") and base.get("bwd_us") else ""
        print(f"{r['shape']:20s} {r['dtype']:9s} {r['label']:18s} {r.get('bwd_us', float('nan')):10.1f} us {speed:>6s}"
              f"  err {r.get('rel_error_vs_default', float('nan')):.1e}  fwd+ck {r['fwd_ck_us']:.1f} us  {r['status']}")


if __name__ == "__main__":
    main()
