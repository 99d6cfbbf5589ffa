"""Selective scan forward: every variant of the Triton kernel at the goal shape, on a GPU (under 120 s on an H100).

    python benchmarks/sweep_selective.py        (SS_DRY=1: a dry run on CPU, tiny shape, in the interpreter)

This is how ``kernels/selective.py`` picks its default variant; the output of the
last run is in book/data/benchmarks/logs/.

B8 D2048 L2048 N16 (G = 1), bf16 u/delta/B/C/z, fp32 A/D/delta_bias, D, z, delta_bias, softplus.
Each config: check against impl="vectorized" (float32 reference from the same bf16 inputs, rel err < 2e-2),
configs marked * also in float32 at (1, 256, 512) against float64 (rel err < 1e-5), then
triton.testing.do_bench(warmup=25, rep=100, median). Configs past SS_BUDGET seconds (90) are skipped;
SS_ONLY=a,b runs only the labels containing a or b. One line per config, sorted by time; then fwd+bwd.
"""
import os, sys, time, traceback
sys.path.insert(0, os.getcwd())
if os.environ.get("SS_DRY") == "1":
    os.environ["TRITON_INTERPRET"] = "1"
import torch
import triton
from triton.testing import do_bench
import ssm_edu
from ssm_edu.kernels.selective import selective_scan_fwd

T0 = time.time()
DRY = os.environ.get("SS_DRY") == "1"  # a dry run of the script on CPU (Triton interpreter), tiny shape
dev = "cpu" if DRY else "cuda"
b, d, L, n = (2, 8, 16, 16) if DRY else (8, 2048, 2048, 16)
if DRY:
    def do_bench(fn, warmup, rep, return_mode):
        t = time.time(); fn(); return (time.time() - t) * 1e3
gen = torch.Generator(device=dev).manual_seed(0)
r = lambda *s: torch.randn(*s, device=dev, generator=gen)
u = r(b, d, L).bfloat16()
delta = (0.5 * r(b, d, L) - 3.0).bfloat16()  # softplus(delta + bias) in about [5e-3, 0.2]
A = -torch.exp(0.5 * r(d, n))
B, C = r(b, n, L).bfloat16(), r(b, n, L).bfloat16()
D, z, bias = r(d), r(b, d, L).bfloat16(), 0.1 * r(d)
kw = dict(D=D, z=z, delta_bias=bias, delta_softplus=True)
with torch.no_grad():  # one batch element at a time: the vectorized form holds (D, N, L) float32 tensors
    ref = torch.cat([ssm_edu.selective_scan(u[i:i + 1].float(), delta[i:i + 1].float(), A, B[i:i + 1].float(),
                                            C[i:i + 1].float(), D=D, z=z[i:i + 1].float(), delta_bias=bias,
                                            delta_softplus=True, impl="vectorized") for i in range(b)])
if not DRY:
    torch.cuda.empty_cache()
print(f"{'cpu' if DRY else torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}; ref {time.time() - T0:.1f}s",
      flush=True)

# (label, kwargs of selective_scan_fwd), by priority: the baselines, then the new knobs (most promising first,
# from the offline sm_90 compile: loop instructions per element), then the configs already timed on 2026-11-28.
# A config whose label ends in " *" is also checked in float32 (the polynomial forms).
NS = dict(variant="nsplit", block_l=8, prefetch=1)
S2 = dict(NS, share=2, softplus_poly=True)
CONFIGS = [
    ("nsplit tn2 BL8 pf1 (default)", dict(NS, tn=2)),
    ("nsplit tn2 BL8 pf0", dict(NS, tn=2, prefetch=0)),
    ("nsplit tn4 BL8 pf1", dict(NS, tn=4)),
    ("rows default", dict(variant="rows")),
    ("rows pf2", dict(variant="rows", prefetch=2)),
    ("nloop", dict(variant="nloop")),
    # share 1: softplus, Δu, gate once per (d, t); 2: also B, C to float32 once; spoly: log-free softplus;
    # ep k: the exp2 of every k-th mode by an FMA polynomial; wW: W warps per program (BLOCK_D = 32 W / TN)
    ("nsplit tn4 share2 spoly w2 *", dict(S2, tn=4, num_warps=2)),
    ("nsplit tn4 share2 spoly w4", dict(S2, tn=4, num_warps=4)),
    ("nsplit tn4 share2 spoly w8", dict(S2, tn=4, num_warps=8)),
    ("nsplit tn4 share2 spoly", dict(S2, tn=4)),
    ("nsplit tn2 share2 spoly", dict(S2, tn=2)),
    ("nsplit tn2 share2 spoly w2", dict(S2, tn=2, num_warps=2)),
    ("nsplit tn4 share2 spoly w2 BL4", dict(S2, tn=4, num_warps=2, block_l=4)),
    ("nsplit tn4 share2 spoly w4 BL16", dict(S2, tn=4, num_warps=4, block_l=16)),
    ("nsplit tn4 share1 spoly", dict(NS, tn=4, share=1, softplus_poly=True)),
    ("nsplit tn2 share1 spoly", dict(NS, tn=2, share=1, softplus_poly=True)),
    ("nsplit tn2 share1", dict(NS, tn=2, share=1)),
    ("nsplit tn4 share1", dict(NS, tn=4, share=1)),
    ("nsplit tn2 spoly", dict(NS, tn=2, softplus_poly=True)),
    ("nsplit tn4 share2 spoly w2 ep4 *", dict(S2, tn=4, num_warps=2, exp_poly=4)),
    ("nsplit tn4 share1 spoly ep4", dict(NS, tn=4, share=1, softplus_poly=True, exp_poly=4)),
    ("nsplit tn2 share1 spoly ep4", dict(NS, tn=2, share=1, softplus_poly=True, exp_poly=4)),
    ("nsplit tn2 share1 spoly ep2 *", dict(NS, tn=2, share=1, softplus_poly=True, exp_poly=2)),
    ("nsplit tn8 share2 spoly w2", dict(S2, tn=8, num_warps=2)),
    ("nsplit tn4 share2 spoly w2 pf2", dict(S2, tn=4, num_warps=2, prefetch=2)),
    ("rows pf2 spoly", dict(variant="rows", prefetch=2, softplus_poly=True)),
    ("nsplit tn2 ep4", dict(NS, tn=2, exp_poly=4)),
    # timed on 2026-11-28 (book/data/benchmarks/logs/2026-11-28-nvidia-h100-80gb-hbm3.txt); only if time is left
    ("rows masked (even=0)", dict(variant="rows", even=False)),
    ("rows pf1", dict(variant="rows", prefetch=1)),
    ("nsplit tn4 BL8 pf0", dict(NS, tn=4, prefetch=0)),
    ("nsplit tn4 BL8 pf2", dict(NS, tn=4, prefetch=2)),
    ("nsplit tn4 BL4 pf1", dict(NS, tn=4, block_l=4)),
    ("nsplit tn4 BL16 pf1", dict(NS, tn=4, block_l=16)),
    ("nsplit tn4 BL8 pf1 w2", dict(NS, tn=4, num_warps=2)),
    ("nsplit tn8 BL8 pf1", dict(NS, tn=8)),
    ("rows BL16 BD32 w4 pf1", dict(variant="rows", block_l=16, block_d=32, num_warps=4, prefetch=1)),
    ("rows BD64 w2 pf1", dict(variant="rows", block_d=64, num_warps=2, prefetch=1)),
]
ONLY = os.environ.get("SS_ONLY")  # a comma-separated list of label substrings
if ONLY:
    CONFIGS = [c for c in CONFIGS if any(x in c[0] for x in ONLY.split(","))]
BUDGET = float(os.environ.get("SS_BUDGET", "90"))  # seconds since the start; later configs are skipped
# float32 check of each config (the polynomial forms must keep float32 accuracy): (1, 256, 512) vs float64
b32, d32, L32 = (1, 8, 16) if DRY else (1, 256, 512)
x32 = [t[:b32, :d32, :L32].float().contiguous() for t in (u, delta)] + [A[:d32]] + [t[:b32, :, :L32].float().contiguous() for t in (B, C)]
kw32 = dict(D=D[:d32], z=z[:b32, :d32, :L32].float().contiguous(), delta_bias=bias[:d32], delta_softplus=True)
with torch.no_grad():
    ref64 = ssm_edu.selective_scan(*[t.double() for t in x32], **{k: (v.double() if isinstance(v, torch.Tensor) else v)
                                   for k, v in kw32.items()}, impl="vectorized")
rows = []
for label, cfg in CONFIGS:
    if time.time() - T0 > BUDGET and not DRY:
        print(f"{label:32s} skipped (time budget {BUDGET:.0f} s)", flush=True)
        continue
    try:
        fn = lambda cfg=cfg: selective_scan_fwd(u, delta, A, B, C, **kw, **cfg)
        y, last, _, meta = fn()
        err = float(ssm_edu.rel_error(y.float(), ref))
        us = do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3
        f32 = ""
        err32 = 0.0
        if label.endswith("*"):  # float32 inputs: a second compile, so only where the numerics changed
            y32 = selective_scan_fwd(*x32, **kw32, **cfg)[0]
            err32 = float(ssm_edu.rel_error(y32.double(), ref64))
            f32 = f" fp32 {err32:.1e}"
        ok = "ok" if (err < ssm_edu.tolerance(torch.bfloat16) and err32 < ssm_edu.tolerance(torch.float32)) else "WRONG"
        meta = {k: v for k, v in meta.items() if v or k in ("EVEN", "PREFETCH")}
        rows.append((us, f"{label:32s} {us:8.1f} us  err {err:.1e}{f32} {ok}  {meta}"))
    except Exception as e:  # a compile error (or anything else) never stops the sweep
        rows.append((float("inf"), f"{label:32s} FAILED {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))
    print(rows[-1][1], f"[{time.time() - T0:.0f}s]", flush=True)
print("---- sorted (floor 128 us; goal <= 256 us; mamba_ssm 532 us)", flush=True)
for _, line in sorted(rows, key=lambda x: x[0]):
    print(line)
best = min(rows, key=lambda x: x[0])
print("BEST:", best[1])

# the default training path once: forward (checkpoints, "nloop") + backward (unchanged by the knobs above)
try:
    if time.time() - T0 > BUDGET + 10 and not DRY:
        raise RuntimeError("fwd+bwd skipped (time budget)")
    leaves = [x.detach().clone().requires_grad_() for x in (u, delta, A, B, C, D, z, bias)]
    gy = torch.randn_like(u)

    def fb():
        for t in leaves:
            t.grad = None
        uu, dd, AA, BB, CC, DD, zz, bb = leaves
        y = ssm_edu.selective_scan(uu, dd, AA, BB, CC, D=DD, z=zz, delta_bias=bb, delta_softplus=True, impl="triton")
        y.backward(gy)

    fb()
    print(f"fwd+bwd (training path): {do_bench(fb, warmup=5, rep=30, return_mode='median') * 1e3:.0f} us")
except Exception:
    traceback.print_exc()
print(f"total {time.time() - T0:.0f}s")
