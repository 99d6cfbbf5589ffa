"""Selective scan on a GPU: forward variants, chapter 7's ladder, the backward pass and mamba_ssm's CUDA kernel.

    python benchmarks/sweep_selective.py        (SS_DRY=1: a dry run on CPU, tiny shapes, in the interpreter)

About 90 s on an H100 when mamba_ssm's CUDA selective scan is already built (``benchmarks.peers``; without it
the CUDA rows say "missing", and SS_BUILD_PEER=1 builds it first, about 3 minutes). What it times, by priority
(configs past SS_BUDGET seconds, default 85, are skipped and listed):

1. at the goal shape B8 D2048 L2048 N16 (bf16 u, Δ, B, C, z; fp32 A, D, delta_bias; softplus): the default
   forward, the ``share`` / ``softplus_poly`` knobs of "nsplit" (TN 2 and 4), the CUDA forward; forward plus
   backward (training path: "nsplit" with checkpoints, then the backward kernel) and the CUDA
   ``selective_scan_fn`` forward plus backward; the first kernel (kernels/selective_first.py);
2. at B8 D4096 L2048, B8 D2048 L8192 and B1 D1024 L65536: the default and the best forward of step 1, the CUDA
   forward, forward plus backward of ours and CUDA's (B1: also the forward without sequence segments);
3. at the goal shape: the remaining forward variants, every rung of chapter 7's ladder (``RUNGS``), the
   backward kernel's knobs (threads along N, warps).

Every config is checked before it is timed: the forward's y against the chunked PyTorch form in float32 on the
same bf16 inputs (relative error < 2e-2; configs marked * also in float32 at (1, 256, 512) against float64,
< 1e-5); forward plus backward, y and the eight gradients against autograd through the same chunked form
(< 2e-2). A failing config is reported and not timed. Times: medians of ``triton.testing.do_bench``.

Every config runs in a child process: a crash (an illegal memory access poisons a CUDA context) loses that
config only; the parent starts a new child for the ones after it. SS_ONLY=a,b keeps the labels containing a
or b. With OUT set, the log goes to $OUT/sweep_selective-<gpu>.json (and the printed lines to .txt); chapter 7
reads the copy committed to book/data/benchmarks/logs/ under the same name (a dry run's log is marked
"dry_run" and never read as data). The table printed last: one line per config and shape.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DRY = os.environ.get("SS_DRY") == "1"
BUDGET = float(os.environ.get("SS_BUDGET", "85"))
GOAL = (8, 2048, 2048, 16)
SHAPES = [GOAL, (8, 4096, 2048, 16), (8, 2048, 8192, 16), (1, 1024, 65536, 16)]
DRY_SHAPES = {GOAL: (2, 8, 16, 16), (8, 4096, 2048, 16): (1, 16, 16, 16), (8, 2048, 8192, 16): (1, 8, 32, 16),
              (1, 1024, 65536, 16): (1, 4, 64, 16)}
EXP_PER_S = 4.2e12  # benchmarks/suite.py's exponential rate (H100 SXM)

NS = dict(variant="nsplit", block_l=8, prefetch=1)
S2 = dict(NS, share=2, softplus_poly=True)
# Chapter 7's ladder: from the first kernel to the default, one change per rung. (label, kind, knobs, change,
# reason). The chapter prints these with the measured times; kinds: "first", "blocked", "fwd" (selective_scan_fwd
# knobs).
RUNGS = [
    ("first kernel", "first", {}, "the recurrence as written: one step per loop iteration, options in PyTorch",
     "latency: every step waits for its own loads; each load gathers one value per channel (strided, "
     "uncoalesced); the options are four more passes over memory"),
    ("blocked steps", "blocked", {}, "BLOCK_L steps per iteration, loaded as tiles and scanned with "
     "tl.associative_scan", "memory traffic: tiles are contiguous along t (coalesced loads); BLOCK_L steps' "
     "loads in flight at once"),
    ("one mode at a time", "fwd", dict(variant="nloop"), "options fused into the kernel; a loop over the N "
     "modes, each a (channels, steps) tile scanned across threads", "memory: one pass (Δ's softplus, D, the "
     "gate in registers); but the scan crosses threads: shuffles per step and mode"),
    ("a thread per channel", "fwd", dict(variant="rows", even=False), "each thread owns whole (N, 4-step) slabs "
     "of its channels: scan, sum over modes and carry inside the thread", "no shuffles; but many registers per "
     "thread, so few warps per SM: latency, not arithmetic, sets the time"),
    ("no masks", "fwd", dict(variant="rows"), "when the blocks tile D and L exactly, loads and stores without "
     "masks", "fewer instructions and registers (vectorised loads)"),
    ("prefetch", "fwd", dict(variant="rows", prefetch=2), "the next block's inputs loaded while this block "
     "computes", "latency: the loads of block k+1 overlap the arithmetic of block k"),
    ("two threads per channel", "fwd", dict(NS, tn=2, prefetch=0), "TN = 2 threads share a channel's 16 modes "
     "(8 each); one warp per program", "registers: fewer per thread, so more warps "
     "per SM to hide latency; costs a shuffle per (d, t) for y"),
    ("prefetch again", "fwd", dict(NS, tn=2), "the default: TN = 2 with the next block prefetched",
     "latency, as in the rung 'prefetch'"),
    ("share the per-step work", "fwd", dict(S2, tn=2), "softplus, Δx, the gate once per (d, t) instead of once "
     "per thread; B, C to float32 once; a log-free softplus", "the issue slots: fewer instructions per element; "
     "the exponential unit: one MUFU op less per (d, t)"),
    ("share, four threads per channel", "fwd", dict(S2, tn=4, num_warps=2), "TN = 4 with the shared work, two "
     "warps per program", "occupancy: 16 warps per SM, with the per-step work no longer repeated by TN threads"),
]
FWD = [  # (label, knobs, fp32 check): the goal shape's forward variants
    ("nsplit tn2 pf1 (default)", {}, False),
    ("nsplit tn2 share2 spoly *", dict(S2, tn=2), True),
    ("nsplit tn4 share2 spoly w2 *", dict(S2, tn=4, num_warps=2), True),
    ("nsplit tn4 share2 spoly w4", dict(S2, tn=4, num_warps=4), False),
    ("nsplit tn2 share1 spoly", dict(NS, tn=2, share=1, softplus_poly=True), False),
    ("nsplit tn4 share1 spoly", dict(NS, tn=4, share=1, softplus_poly=True), False),
    ("nsplit tn2 share2", dict(NS, tn=2, share=2), False),
    ("nsplit tn4 share2 w2", dict(NS, tn=4, share=2, num_warps=2), False),
    ("nsplit tn2 spoly *", dict(NS, tn=2, softplus_poly=True), True),
    ("nsplit tn4 pf1", dict(NS, tn=4), False),
    # 2026-12-08, from the offline compile (benchmarks/compile_selective.py, Triton 3.7.1): at the goal shape the
    # grid has 1024 one-warp programs (8 warps per SM) whatever the registers, so these trade instructions per
    # element (share 2: 0.326-0.361 against share 1's 0.399) and ILP (TN = 1: 16 modes a thread) for registers
    ("nsplit tn2 share2 spoly pf0 *", dict(S2, tn=2, prefetch=0), True),
    ("nsplit tn2 share2 spoly bl4 pf0", dict(S2, tn=2, block_l=4, prefetch=0), False),
    ("nsplit tn1 share1 spoly", dict(NS, tn=1, share=1, softplus_poly=True), False),
    ("nsplit tn1 share1 spoly bl4", dict(NS, tn=1, share=1, softplus_poly=True, block_l=4), False),
]
BWD = [  # (label, knobs of selective_scan_bwd): forward plus backward at the goal shape
    ("bwd tn4 w1 (default)", {}),
    ("bwd tn4 w4", dict(tn=4, num_warps=4)),
    ("bwd tn4 w2", dict(tn=4, num_warps=2)),
    ("bwd tn8 w4", dict(tn=8, num_warps=4)),
    ("bwd tn8 w2", dict(tn=8, num_warps=2)),
    ("bwd tn8 w1", dict(tn=8, num_warps=1)),
    ("bwd tn4 w1 share0", dict(share=0)),
]


def shape_name(shape):
    b, d, L, n = shape
    return f"B{b} D{d} L{L} N{n}"


def floor_us(shape, kind, hbm):
    """The roofline floor of benchmarks/selective.py's ``scan_floor`` (bf16 inputs, with z)."""
    b, d, L, n = shape
    io = 2 * (4 * b * d * L + 2 * b * n * L)  # u, Δ, z, y and B, C
    if kind == "fwd":
        return 1e6 * max(io / hbm, b * d * L * n / EXP_PER_S)
    return 1e6 * max(3 * io / hbm, 2 * b * d * L * n / EXP_PER_S)


def plan():
    """The configs in priority order: dicts with label, kind, shape, knobs, check, group, rung."""
    out = []

    def add(label, kind, shape=GOAL, knobs=None, check=False, group="fwd", rung=None):
        out.append(dict(label=label, kind=kind, shape=shape, knobs=knobs or {}, check32=check, group=group,
                        rung=rung))

    for label, knobs, check in FWD[:3]:
        add(label, "fwd", knobs=knobs, check=check)
    add("mamba_ssm CUDA", "cuda_fwd")
    add("fwd+bwd (default)", "fwdbwd", group="bwd")
    add("mamba_ssm CUDA fwd+bwd", "cuda_fwdbwd", group="bwd")
    add("first kernel", "first", group="rung", rung=0)
    for shape in SHAPES[1:]:
        add("nsplit tn2 pf1 (default)", "fwd", shape)
        add("best forward", "fwd_best", shape)
        add("mamba_ssm CUDA", "cuda_fwd", shape)
        if shape[0] == 1:
            add("default without segments", "fwd", shape, dict(segments=1))
        add("fwd+bwd (default)", "fwdbwd", shape, group="bwd")
        add("mamba_ssm CUDA fwd+bwd", "cuda_fwdbwd", shape, group="bwd")
    for label, knobs, check in FWD[3:]:
        add(label, "fwd", knobs=knobs, check=check)
    for i, (label, kind, knobs, _, _) in enumerate(RUNGS):
        if i:
            add(label, kind, knobs=knobs, group="rung", rung=i)
    for label, knobs in BWD[1:]:
        add(label, "fwdbwd", knobs=knobs, group="bwd")
    only = os.environ.get("SS_ONLY")
    if only:
        out = [c for c in out if any(x in c["label"] for x in only.split(","))]
    return out


# ----------------------------------------------------------------------------- the child: runs configs


class Inputs:
    """Random inputs of one shape and their references, made once per child."""

    def __init__(self, shape, dev, reference=True):
        import torch

        import ssm_edu

        b, d, L, n = DRY_SHAPES.get(shape, shape) if DRY else shape
        gen = torch.Generator(device=dev).manual_seed(0)
        r = lambda *s: torch.randn(*s, device=dev, generator=gen)  # noqa: E731
        self.args = dict(u=r(b, d, L).bfloat16(), delta=(0.5 * r(b, d, L) - 3.0).bfloat16(),  # Δ ~ [5e-3, 0.2]
                         A=-torch.exp(0.5 * r(d, n)), B=r(b, n, L).bfloat16(), C=r(b, n, L).bfloat16(), D=r(d),
                         z=r(b, d, L).bfloat16(), delta_bias=0.1 * r(d))
        self.shape = (b, d, L, n)
        self._grads = None
        gen = torch.Generator(device=dev).manual_seed(1)
        self.gy = torch.randn(b, d, L, device=dev, generator=gen).bfloat16()
        if not reference:
            return
        f32 = {k: v.float() for k, v in self.args.items()}
        with torch.no_grad():  # batch element by batch element, chunk by chunk: memory (d, n, chunk) at a time
            self.y = torch.cat([ssm_edu.selective_scan_chunked(**{k: (v[i:i + 1] if v.dim() == 3 else v)
                                                                  for k, v in f32.items()}, delta_softplus=True,
                                                               chunk=min(L, 2048)) for i in range(b)])

    def grads(self):
        """y's reference gradients for the output gradient ``self.gy``: autograd through the chunked form in
        float32, batch element by batch element; where that would hold too much (its log-depth scans keep
        about 30 (d, n, chunk) tensors per chunk: D N L > 2048 16 4096), the kernels in float32 instead (the
        tests check them against the loop in float64 at many sizes)."""
        import torch

        import ssm_edu

        if self._grads is None and self.shape[1] * self.shape[2] * self.shape[3] > 2048 * 16 * 4096:
            from ssm_edu.kernels.selective import selective_scan_bwd, selective_scan_fwd

            a = {k: v.float() for k, v in self.args.items()}
            _, _, ck, meta = selective_scan_fwd(a["u"], a["delta"], a["A"], a["B"], a["C"], D=a["D"], z=a["z"],
                                                delta_bias=a["delta_bias"], delta_softplus=True, save_checkpoints=True)
            g = selective_scan_bwd(self.gy.float(), None, ck, meta, a["u"], a["delta"], a["A"], a["B"], a["C"],
                                   D=a["D"], z=a["z"], delta_bias=a["delta_bias"], delta_softplus=True)
            self._grads = dict(zip(["u", "delta", "A", "B", "C", "D", "z", "delta_bias"], g))
            self.grads_from = "the kernels in float32"
        if self._grads is None:
            self.grads_from = "autograd through the chunked form in float32"
            b = self.shape[0]
            acc = {}
            for i in range(b):
                leaves = {k: (v[i:i + 1] if v.dim() == 3 else v).float().detach().requires_grad_()
                          for k, v in self.args.items()}
                y = ssm_edu.selective_scan_chunked(**leaves, delta_softplus=True, chunk=min(self.shape[2], 1024))
                y.backward(self.gy[i:i + 1].float())
                for k, v in leaves.items():
                    acc.setdefault(k, []).append(v.grad)
            self._grads = {k: (torch.cat(v) if self.args[k].dim() == 3 else torch.stack(v).sum(0))
                           for k, v in acc.items()}
        return self._grads


def measure_hbm():
    import torch
    from triton.testing import do_bench

    if DRY:
        return 3.0e12
    n = 1 << 29  # 2 GiB of float32
    src = torch.empty(n, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=10, rep=50, return_mode="median")
    del src, dst
    return 2 * 4 * n / (ms * 1e-3)


def bench(fn, fwdbwd=False):
    from triton.testing import do_bench

    if DRY:
        t = time.time()
        fn()
        return (time.time() - t) * 1e6
    if fwdbwd:
        return 1e3 * do_bench(fn, warmup=10, rep=60, return_mode="median")
    return 1e3 * do_bench(fn, warmup=25, rep=100, return_mode="median")


def cuda_peer():
    """mamba_ssm's selective_scan_fn if its CUDA extension is built (or SS_BUILD_PEER=1), else a reason string."""
    from benchmarks import peers

    if DRY:
        return "dry run (no CUDA)"
    built = any((peers.PEERS / "build" / "selective_scan_cuda").glob("selective_scan_cuda*.so"))
    if not built and os.environ.get("SS_BUILD_PEER") != "1":
        return "mamba_ssm's selective_scan_cuda is not built here (SS_BUILD_PEER=1 builds it, ~3 min)"
    try:
        return peers.selective_scan_fn()
    except peers.Missing as why:
        return str(why)


def run_config(cfg, cache, peer, warm_only=False):
    """One config -> a result dict (status "ok", "WRONG", "missing" or "FAILED"); ``warm_only``: run once (compile)."""
    import torch

    import ssm_edu
    from ssm_edu.kernels.selective import selective_scan_bwd, selective_scan_fwd
    from ssm_edu.kernels.selective_first import selective_scan_blocked, selective_scan_first

    shape = tuple(cfg["shape"])
    if shape not in cache:
        cache.clear()  # one shape's inputs at a time
        if not DRY:
            torch.cuda.empty_cache()
        cache[shape] = Inputs(shape, "cpu" if DRY else "cuda", reference=not warm_only)
    inp = cache[shape]
    a = inp.args
    res = dict(label=cfg["label"], kind=cfg["kind"], shape=shape_name(shape), knobs=cfg["knobs"], group=cfg["group"])
    if cfg.get("rung") is not None:
        res["rung"] = cfg["rung"]
    kind, knobs = cfg["kind"], dict(cfg["knobs"])
    tol = ssm_edu.tolerance(torch.bfloat16)
    opts = dict(D=a["D"], z=a["z"], delta_bias=a["delta_bias"], delta_softplus=True)
    if kind in ("cuda_fwd", "cuda_fwdbwd") and isinstance(peer, str):
        return dict(res, status="missing", missing=peer)
    if kind in ("fwd", "fwd_best", "first", "blocked", "cuda_fwd"):
        if kind in ("fwd", "fwd_best"):
            fn = lambda: selective_scan_fwd(a["u"], a["delta"], a["A"], a["B"], a["C"], **opts, **knobs)[0]  # noqa
        elif kind == "first":
            fn = lambda: selective_scan_first(**a, delta_softplus=True)  # noqa: E731
        elif kind == "blocked":
            fn = lambda: selective_scan_blocked(**a, delta_softplus=True)  # noqa: E731
        else:
            fn = lambda: peer(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"],  # noqa
                              delta_softplus=True)
        if warm_only:
            fn()
            if cfg.get("check32"):  # the float32 specialisation of the check below
                x = {k: v[:1, :256, :512].float().contiguous() if v.dim() == 3 else v[:256].float() for k, v in a.items()}
                selective_scan_fwd(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"],
                                   delta_bias=x["delta_bias"], delta_softplus=True, **knobs)
            return res
        err = float(ssm_edu.rel_error(fn().float(), inp.y))
        res["rel_error"] = err
        if cfg.get("check32"):  # float32 inputs against float64: the polynomial forms keep float32 accuracy
            b32, d32, L32 = (1, 8, 16) if DRY else (1, 256, 512)
            x32 = {k: (v[:b32, :d32, :L32] if v.dim() == 3 and k in ("u", "delta", "z") else
                       v[:b32, :, :L32] if v.dim() == 3 else v[:d32]).float().contiguous() for k, v in a.items()}
            ref64 = ssm_edu.selective_scan(**{k: v.double() for k, v in x32.items()}, delta_softplus=True,
                                           impl="vectorized")
            y32 = selective_scan_fwd(x32["u"], x32["delta"], x32["A"], x32["B"], x32["C"], D=x32["D"], z=x32["z"],
                                     delta_bias=x32["delta_bias"], delta_softplus=True, **knobs)[0]
            res["rel_error_fp32"] = float(ssm_edu.rel_error(y32.double(), ref64))
        wrong = not err < tol or not res.get("rel_error_fp32", 0.0) < ssm_edu.tolerance(torch.float32)
        if wrong and kind != "cuda_fwd":
            return dict(res, status="WRONG")
        res["median_us"] = bench(fn)
        return dict(res, status="ok" if not wrong else "WRONG (peer)")
    # forward plus backward
    ref = None if warm_only else inp.grads()
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    leaves = {k: v.detach().clone().requires_grad_() for k, v in a.items()}
    if kind == "fwdbwd":
        def fb():
            y, last, ck, meta = selective_scan_fwd(*(leaves[k] for k in names[:5]), D=leaves["D"], z=leaves["z"],
                                                   delta_bias=leaves["delta_bias"], delta_softplus=True,
                                                   save_checkpoints=True)
            g = selective_scan_bwd(inp.gy, None, ck, meta, *(leaves[k] for k in names[:5]), D=leaves["D"],
                                   z=leaves["z"], delta_bias=leaves["delta_bias"], delta_softplus=True, **knobs)
            return y, dict(zip(names, g))
    else:
        def fb():
            for v in leaves.values():
                v.grad = None
            y = peer(*(leaves[k] for k in names[:5]), leaves["D"], leaves["z"], leaves["delta_bias"],
                     delta_softplus=True)
            y.backward(inp.gy)
            return y, {k: leaves[k].grad for k in names}
    y, grads = fb()
    if warm_only:
        return res
    errs = {"y": float(ssm_edu.rel_error(y.float(), inp.y))}
    errs.update({f"d{k}": float(ssm_edu.rel_error(grads[k].float(), ref[k].float())) for k in names})
    res["rel_error"] = max(errs.values())
    res["rel_errors"] = errs
    res["reference"] = inp.grads_from
    wrong = not res["rel_error"] < tol
    if wrong and kind == "fwdbwd":
        return dict(res, status="WRONG")
    res["median_us"] = bench(fb, fwdbwd=True)
    return dict(res, status="ok" if not wrong else "WRONG (peer)")


def child(configs, deadline, best):
    """Run ``configs`` in order, printing @@START / @@RESULT lines for the parent. ``best``: (label, knobs) of
    the fastest goal-shape forward known so far; "best forward" configs time it (updated as results come)."""
    import torch
    import triton

    print("@@INFO " + json.dumps(dict(device="cpu (dry run)" if DRY else torch.cuda.get_device_name(),
                                       torch=torch.__version__, triton=triton.__version__)), flush=True)
    peer = None
    cache = {}
    for idx, cfg in configs:
        if time.time() > deadline:
            print("@@RESULT " + json.dumps(dict(idx=idx, label=cfg["label"], shape=shape_name(cfg["shape"]),
                                                status="skipped (time budget)")), flush=True)
            continue
        print(f"@@START {idx}", flush=True)
        if cfg["kind"].startswith("cuda") and peer is None:
            peer = cuda_peer()
        if cfg["kind"] == "hbm":
            print("@@RESULT " + json.dumps(dict(idx=idx, hbm=measure_hbm(), status="ok")), flush=True)
            continue
        if cfg["kind"] == "fwd_best":
            if not best or not best[1]:
                print("@@RESULT " + json.dumps(dict(idx=idx, label=cfg["label"], shape=shape_name(cfg["shape"]),
                                                    status="skipped (the best forward is the default)")), flush=True)
                continue
            cfg = dict(cfg, label=f"best: {best[0]}", knobs=best[1])
        t0 = time.time()
        if os.environ.get("SS_CRASH_TEST") and os.environ["SS_CRASH_TEST"] in cfg["label"]:
            os._exit(134)  # a test of the parent's recovery: as if the config had killed the process
        try:
            res = run_config(cfg, cache, peer)
        except Exception as e:  # a compile error, a failed check...: reported, the sweep goes on
            res = dict(label=cfg["label"], shape=shape_name(cfg["shape"]), status="FAILED",
                       error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            if "CUDA error" in str(e) or "illegal" in str(e):  # the context is gone: let the parent restart us
                print("@@RESULT " + json.dumps(dict(res, idx=idx)), flush=True)
                traceback.print_exc()
                sys.exit(3)
        res["idx"], res["seconds"] = idx, round(time.time() - t0, 1)
        if (res["status"] == "ok" and cfg["group"] == "fwd" and tuple(cfg["shape"]) == GOAL
                and cfg["kind"] == "fwd" and (best is None or res["median_us"] < best[2])):
            best = (cfg["label"], cfg["knobs"], res["median_us"])
        print("@@RESULT " + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------- the parent


def warm(configs):
    """Compile the configs' kernels (a child of the warm-up phase): each runs once on a small shape with the
    goal shapes' specialisations (sizes multiples of 16 and of every block), so that the timed children find
    them in Triton's cache. Compiling takes most of a cold sweep's time; processes compile side by side."""
    import torch

    small = {GOAL: (1, 256, 256, 16), (8, 4096, 2048, 16): (1, 256, 256, 16), (8, 2048, 8192, 16): (1, 256, 256, 16),
             (1, 1024, 65536, 16): (1, 256, 1024, 16)}
    cache = {}
    for idx, cfg in configs:
        if cfg["kind"].startswith("cuda") or cfg["kind"] == "hbm":
            continue
        shape = tuple(cfg["shape"]) if DRY else small[tuple(cfg["shape"])]  # a dry run's shapes are small
        knobs = dict(cfg["knobs"])
        if not DRY and cfg["kind"] in ("fwd", "fwd_best") and tuple(cfg["shape"]) == (1, 1024, 65536, 16) \
                and "segments" not in knobs:
            knobs["segments"] = 32  # the automatic choice at B1 D1024 L65536 on an H100 (64 one-warp programs)
        try:
            run_config(dict(cfg, shape=shape, knobs=knobs), cache, None, warm_only=True)
        except Exception as e:
            print(f"warm-up of {cfg['label']}: {type(e).__name__}: {str(e)[:200]}", flush=True)
    if not DRY:
        torch.cuda.synchronize()


def run_children(configs, deadline, log):
    """Run configs [(idx, cfg)] in child processes; a crashed child is replaced by one for the configs after it."""
    results = {}
    info = {}
    todo = list(configs)
    by_idx = dict(configs)
    while todo:
        best = None  # the fastest goal-shape forward so far, for the "best forward" configs
        for i, r in results.items():
            c = by_idx[i]
            if (r.get("status") == "ok" and c["group"] == "fwd" and c["kind"] == "fwd" and tuple(c["shape"]) == GOAL
                    and (best is None or r["median_us"] < best[2])):
                best = (c["label"], c["knobs"], r["median_us"])
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(deadline)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=ROOT)
        proc.stdin.write(json.dumps(dict(configs=todo, best=best)))
        proc.stdin.close()
        current = None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("@@START "):
                current = int(line.split()[1])
            elif line.startswith("@@RESULT "):
                res = json.loads(line[9:])
                results[res["idx"]] = res
                current = None
                log(format_result(res, by_idx[res["idx"]]))
            elif line.startswith("@@INFO "):
                info = json.loads(line[7:])
            elif line.strip():
                log("    " + line)
        proc.wait()
        if current is not None and current not in results:  # the child died inside this config
            cfg = by_idx[current]
            results[current] = dict(idx=current, label=cfg["label"], shape=shape_name(cfg["shape"]),
                                    status="CRASHED", error=f"child exited with {proc.returncode}")
            log(format_result(results[current], cfg))
        todo = [(i, c) for i, c in todo if i not in results]
        if proc.returncode == 0 or (current is None and proc.returncode != 3):
            break  # finished (or died between configs for a reason a new child would not fix)
    return results, info


def format_result(res, cfg):
    label = f"{res.get('label', cfg['label'])[:34]:34s} {res.get('shape', ''):22s}"
    if res.get("hbm"):
        return f"HBM bandwidth (2 GiB copy): {res['hbm'] / 1e12:.2f} TB/s"
    if res["status"] in ("ok", "WRONG (peer)"):
        extra = f" fp32 {res['rel_error_fp32']:.1e}" if "rel_error_fp32" in res else ""
        return f"{label} {res['median_us']:9.1f} us  err {res['rel_error']:.1e}{extra} {res['status']}"
    why = res.get("error") or res.get("missing") or (f"err {res['rel_error']:.1e}" if "rel_error" in res else "")
    return f"{label} {res['status']}: {why}"


def main():
    t0 = time.time()
    deadline = t0 + BUDGET
    out_dir = os.environ.get("OUT")
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    configs = plan()
    indexed = [(0, dict(label="hbm", kind="hbm", shape=GOAL, knobs={}, group="hbm"))] + \
        [(i + 1, c) for i, c in enumerate(configs)]
    if os.environ.get("SS_WARM", "0" if DRY else "1") == "1":  # compile side by side first
        procs = min(12, max(1, (os.cpu_count() or 2) - 2))
        todo = [(i, c) for i, c in indexed if not c["kind"].startswith("cuda") and c["kind"] != "hbm"]
        import tempfile

        jobs = []
        tmp = tempfile.mkdtemp(prefix="sweep_warm_")
        for k in range(procs):
            part = todo[k::procs]
            if part:
                with open(os.path.join(tmp, f"{k}.json"), "w") as f:
                    json.dump(part, f)
                log_f = open(os.path.join(tmp, f"{k}.log"), "w")
                jobs.append((subprocess.Popen([sys.executable, os.path.abspath(__file__), "--warm",
                                               os.path.join(tmp, f"{k}.json")], stdout=log_f,
                                              stderr=subprocess.STDOUT, cwd=ROOT), log_f, k))
        for p, log_f, k in jobs:
            try:
                p.wait(timeout=max(5.0, deadline - 30 - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            log_f.close()
            for line in open(os.path.join(tmp, f"{k}.log")).read().splitlines():
                if line.strip():
                    log("    warm: " + line)
        log(f"compiled in {len(jobs)} processes: {time.time() - t0:.0f} s")
    results, info = run_children(indexed, deadline, log)
    hbm = results.get(0, {}).get("hbm") or 3.0e12
    rows = []
    for idx, cfg in indexed[1:]:
        res = results.get(idx, dict(status="not run"))
        row = dict(res, label=res.get("label", cfg["label"]), kind=cfg["kind"], shape=shape_name(cfg["shape"]),
                   group=cfg["group"], knobs=res.get("knobs", cfg["knobs"]))
        row.pop("idx", None)
        if cfg.get("rung") is not None:
            name, kind, knobs, change, reason = RUNGS[cfg["rung"]]
            row.update(rung=cfg["rung"], change=change, reason=reason)
        if row.get("median_us"):
            f = floor_us(cfg["shape"], "fwdbwd" if "bwd" in cfg["kind"] else "fwd", hbm)
            row.update(floor_us=f, fraction_of_floor=f / row["median_us"])
        rows.append(row)
    doc = dict(info, date=datetime.date.today().isoformat(), hbm_tb_s=hbm / 1e12, dry_run=DRY,
               goal_shape=shape_name(GOAL), rows=rows,
               rungs=[dict(index=i, label=r[0], kind=r[1], knobs=r[2], change=r[3], reason=r[4])
                      for i, r in enumerate(RUNGS)])
    log(f"---- {info.get('device')} torch {info.get('torch')} triton {info.get('triton')}; floors at "
        f"{hbm / 1e12:.2f} TB/s and {EXP_PER_S:.1e} exp/s; {time.time() - t0:.0f} s")
    for shape in SHAPES:
        sub = [r for r in rows if r["shape"] == shape_name(shape) and r.get("median_us")]
        for r in sorted(sub, key=lambda r: (r["group"], r["median_us"])):
            frac = f"{100 * r['fraction_of_floor']:.0f}%" if r.get("fraction_of_floor") else ""
            log(f"{r['shape']:20s} {r['group']:5s} {r['label'][:34]:34s} {r['median_us']:9.1f} us  {frac:>4s} "
                f"of floor")
    bad = [r for r in rows if r["status"] not in ("ok",)]
    for r in bad:
        log(f"not timed: {r['label']} {r['shape']}: {r['status']} {r.get('error', r.get('missing', ''))}")
    if out_dir:  # named as chapter 7 looks for it in book/data/benchmarks/logs/
        import re

        slug = "dry-run" if DRY else re.sub(r"[^a-z0-9]+", "-", str(info.get("device", "gpu")).lower()).strip("-")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"sweep_selective-{slug}.json"), "w") as f:
            json.dump(doc, f, indent=1)
        with open(os.path.join(out_dir, f"sweep_selective-{slug}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--warm":
        if DRY:
            os.environ["TRITON_INTERPRET"] = "1"
        with open(sys.argv[2]) as f:
            warm([(i, c) for i, c in json.load(f)])
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        if DRY:
            os.environ["TRITON_INTERPRET"] = "1"
        job = json.loads(sys.stdin.read())
        child([(i, c) for i, c in job["configs"]], float(sys.argv[2]), job["best"])
    else:
        main()
