"""The selective scan's kernels compiled for an H100 without one: registers, spills, the main loop's SASS.

    python benchmarks/compile_selective.py [LABEL ...] [--dump DIR] [--bwd | --ladder] [--json FILE]
    python benchmarks/compile_selective.py --book book/data/benchmarks/logs/compile_selective-sm90-triton-X.json

--bwd: the backward kernel's configs (``BWD_CONFIGS``); --ladder: chapter 7's rungs (the first kernels of
kernels/selective_first.py and the forward's configs, ``sweep_selective.RUNGS``); --book: all three tables
in one JSON, the file chapter 7 reads (regenerate it when a kernel of the ladder changes).

Compiles ``_selective_scan_fwd`` of kernels/selective.py for sm_90 (Triton's compiler and the ptxas and
cuobjdump of its wheel: no GPU needed) as the launcher would at the goal shape B8 D2048 L2048 N16: bf16
u, Δ, B, C, z; D, delta_bias, softplus; the knobs of each config go through the launcher's ``_blocks``, as
in benchmarks/sweep_selective.py. LABEL keeps the configs whose label contains it; --dump writes each
config's TTGIR, PTX and SASS to DIR.

For each config: registers, spill bytes (stores/loads), warps per SM (by registers), shared memory; then
in the main loop (the body of the longest backward branch) the SASS instructions, MUFU operations (ex2,
rcp, lg2), FFMA, shuffles, shared loads/stores and barriers; per (b, d, t, n) element the instructions and
MUFU operations; the issue-bound time (528 schedulers at 1.755 GHz), the MUFU-bound time (16 lanes per SM)
and a predicted time (the larger, times the measured / issue ratio of 2026-11-28: 1.30 at up to 8 warps per
SM, 1.2 at up to 16). The table in kernels/selective.py's docstring came from this script under Triton 3.6;
other Triton versions compile differently. The prediction assumes a loop that issues as the forward's does:
the backward's default took about 9 times its issue-bound time on the H100 (2026-12-07), a loop that waits on
its barriers and shared-memory round trips (benchmarks/notes/selective.md), so its column is a floor there.
"""
import argparse
import json
import os
import re
import sys

os.environ["TRITON_INTERPRET"] = "0"  # before the kernels are imported: compile, never interpret
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks.sweep_selective

import triton  # noqa: E402

import sm90  # noqa: E402  (benchmarks/sm90.py: this script's folder is on sys.path)
from ssm_edu.kernels import selective  # noqa: E402
SHAPE = dict(B=8, D=2048, L=2048, N=16)
POINTERS = dict(u_ptr="*bf16", delta_ptr="*bf16", A2_ptr="*fp32", B_ptr="*bf16", C_ptr="*bf16", D_ptr="*fp32",
                z_ptr="*bf16", bias_ptr="*fp32", y_ptr="*bf16", last_ptr="*fp32", ck_ptr="*fp32", hend_ptr="*fp32",
                sdt_ptr="*fp32")
SCHEDULERS, CLOCK = 528, 1.755e9  # H100 SXM: 132 SMs x 4 schedulers; boost clock

NS = dict(variant="nsplit", block_l=8, prefetch=1)
S2 = dict(NS, share=2, softplus_poly=True)
CONFIGS = [  # (label, keyword arguments of selective_scan_fwd), the docstring's table first
    ("nsplit tn2 (the default)", dict(NS, tn=2)),
    ("nsplit tn4", dict(NS, tn=4)),
    ("nsplit tn2 share1 spoly", dict(NS, tn=2, share=1, softplus_poly=True)),
    ("nsplit tn2 share2 spoly", dict(S2, tn=2)),
    ("nsplit tn4 share1 spoly", dict(NS, tn=4, share=1, softplus_poly=True)),
    ("nsplit tn4 share2 spoly w2", dict(S2, tn=4, num_warps=2)),
    ("nsplit tn4 share2 spoly w4", dict(S2, tn=4, num_warps=4)),
    ("nsplit tn4 share2 spoly w8", dict(S2, tn=4, num_warps=8)),
    ("nsplit tn4 share2 spoly w2 ep4", dict(S2, tn=4, num_warps=2, exp_poly=4)),
    ("rows", dict(variant="rows")),
    ("rows pf2", dict(variant="rows", prefetch=2)),
    ("nloop", dict(variant="nloop")),
]


def goal_ints(B, D, L, N):
    """The integer arguments as the launcher passes them for contiguous inputs with G = 1."""
    u = dict(b=D * L, d=L, l=1)
    bc = dict(b=N * L, g=N * L, n=L, l=1)
    ints = dict(L=L, Dg=D, N=N, SEG_LEN=L)
    for x in "udz":
        ints.update({f"s_{x}{k}": v for k, v in u.items()})
    for x in "BC":
        ints.update({f"s_{x}{k}": v for k, v in bc.items()})
    return ints


def compile_fwd(knobs, shape=SHAPE):
    """Compile as the JIT would specialise: ints equal to 1 become constants, multiples of 16 and the pointers
    get divisibility 16. Returns (compiled kernel, its constexprs, num_warps, registers, (spill stores, loads), SASS)."""
    variant, meta, extra = selective._blocks(shape["D"], shape["N"], shape["L"], False, knobs.get("variant"),
                                             knobs.get("block_d"), knobs.get("block_l"), knobs.get("num_warps"), 2,
                                             knobs.get("prefetch"), knobs.get("tn"), knobs.get("even"),
                                             knobs.get("share", False), knobs.get("softplus_poly", False),
                                             knobs.get("exp_poly", 0))
    ce = dict(meta, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, SAVE_CK=bool(knobs.get("save_checkpoints")),
              VARIANT=selective.VARIANTS[variant])
    return _compile(selective._selective_scan_fwd, ce, POINTERS, extra["num_warps"], shape)


BWD_POINTERS = dict(u_ptr="*bf16", delta_ptr="*bf16", A2_ptr="*fp32", B_ptr="*bf16", C_ptr="*bf16", D_ptr="*fp32",
                    z_ptr="*bf16", bias_ptr="*fp32", gy_ptr="*bf16", glast_ptr="*fp32", ck_ptr="*fp32",
                    du_ptr="*bf16", ddelta_ptr="*bf16", dz_ptr="*bf16", dB_ptr="*fp32", dC_ptr="*fp32",
                    dA_ptr="*fp32", dD_ptr="*fp32", dbias_ptr="*fp32")


def compile_bwd(knobs, shape=SHAPE):
    """The backward kernel as ``compile_fwd`` compiles the forward: knobs of ``selective._bwd_blocks`` (``tn``,
    ``num_warps``, ``block_d``) and the forward's checkpoint spacing ``block_l`` (8 by default)."""
    meta, extra = selective._bwd_blocks(shape["D"], shape["N"], knobs.get("block_l", 8), knobs.get("tn"),
                                        knobs.get("num_warps"), knobs.get("block_d"), knobs.get("share"))
    ce = dict(meta, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, HAS_GLAST=False)
    return _compile(selective._selective_scan_bwd, ce, BWD_POINTERS, extra["num_warps"], shape)


def compile_first(kind, shape=SHAPE):
    """kernels/selective_first.py's kernel ("first" or "blocked") as its launcher compiles it (float32 tensors)."""
    from ssm_edu.kernels import selective_first as sf

    fn = sf.selective_scan_first_kernel if kind == "first" else sf.selective_scan_blocked_kernel
    meta, warps = (sf._first_blocks if kind == "first" else sf._blocked_blocks)(shape["D"], shape["N"], shape["L"])
    ce = dict(meta, BLOCK_N=selective.next_pow2(shape["N"]), G=1)
    pointers = {name: "*fp32" for name in ("x_ptr", "dt_ptr", "A_ptr", "B_ptr", "C_ptr", "y_ptr", "h_ptr")}
    return _compile(fn, ce, pointers, warps["num_warps"], dict(shape, G=1))


def _compile(fn, ce, pointers, num_warps, shape):
    ints = dict(goal_ints(**{k: shape[k] for k in ("B", "D", "L", "N")}), D=shape["D"])
    sig, ce, attrs = sm90.signature(fn, ce, pointers, ints)
    k, regs, spill, sass = sm90.compile_sm90(fn, sig, ce, attrs, num_warps, num_stages=3)
    return k, ce, num_warps, regs, spill, sass


def loop_counts(sass):
    """Instruction counts of the main loop: the body of the last backward branch that spans over 0x400 bytes."""
    ins, loops = sm90.sass_loops(sass)
    main = [(lo, hi) for lo, hi in loops if hi - lo > 0x400]
    loop = [x for x in ins if main[-1][0] <= x[0] <= main[-1][1]] if main else ins
    count = lambda pattern: sum(1 for _, t in loop if re.search(pattern, t))  # noqa: E731
    return dict(n=len(loop), mufu=count(r"MUFU\."), ex2=count(r"MUFU\.EX2"), rcp=count(r"MUFU\.RCP"),
                lg2=count(r"MUFU\.LG2"), ffma=count(r"FFMA"), shfl=count(r"SHFL"), lds=count(r"\bLDS"),
                sts=count(r"\bSTS|STSM"), bar=count(r"BAR"))


def measure(label, kind, knobs, shape=SHAPE, dump=None):
    """Compile one config ("fwd": selective_scan_fwd's knobs, "bwd": selective_scan_bwd's, "first", "blocked")
    and count: a dict with registers, spills, warps per SM, shared memory, the main loop's counts, per element
    (b, d, t, n), and the issue-bound, MUFU-bound and predicted times."""
    if kind == "fwd":
        k, ce, warps, regs, spill, sass = compile_fwd(knobs, shape)
    elif kind == "bwd":
        k, ce, warps, regs, spill, sass = compile_bwd(knobs, shape)
    else:
        k, ce, warps, regs, spill, sass = compile_first(kind, shape)
    programs = shape["B"] * -(-shape["D"] // ce["BLOCK_D"])
    per_sm = min(65536 // (regs * 32 * warps), -(-programs // 132)) * warps  # warps per SM, by registers
    q = loop_counts(sass)
    per_iter = ce["BLOCK_D"] * ce.get("BLOCK_L", 1) * shape["N"] / warps  # elements per warp-iteration
    elements = shape["B"] * shape["D"] * shape["L"] * shape["N"]
    t_issue = q["n"] / per_iter * elements / SCHEDULERS / CLOCK * 1e6
    t_mufu = q["mufu"] / per_iter * elements / SCHEDULERS * 8 / CLOCK * 1e6  # 16 lanes: 8 cycles a warp op
    ratio = 1.30 if per_sm <= 8 else 1.2 if per_sm <= 16 else 1.1
    if dump:
        sm90.dump(k, sass, dump, label)
    return dict(label=label, kind=kind, knobs=knobs, regs=regs, spill=list(spill), warps_per_sm=per_sm,
                smem=k.metadata.shared, loop=q, instr_per_el=q["n"] / per_iter, mufu_per_el=q["mufu"] / per_iter,
                shfl_per_el=q["shfl"] / per_iter, t_issue_us=t_issue, t_mufu_us=t_mufu,
                predicted_us=ratio * max(t_issue, t_mufu))


def fmt(m):
    """One line of the table."""
    q = m["loop"]
    return (f"{m['label']:32s} {m['regs']:4d} {m['spill'][0]:3d}/{m['spill'][1]:<3d} {m['warps_per_sm']:3d} "
            f"{m['smem']:6d} | {q['n']:5d} {q['mufu']:4d}({q['ex2']}/{q['rcp']}/{q['lg2']}) {q['ffma']:4d} "
            f"{q['shfl']:3d} {q['lds']}/{q['sts']} {q['bar']:3d} | {m['instr_per_el']:.3f}  {m['mufu_per_el']:.4f} "
            f"{m['t_issue_us']:6.0f} {m['t_mufu_us']:6.0f} {m['predicted_us']:6.0f}")


def row(label, knobs, shape=SHAPE, dump=None):
    """One line of the forward table."""
    return fmt(measure(label, "fwd", knobs, shape, dump))


BWD_CONFIGS = [  # (label, knobs of selective_scan_bwd), as in benchmarks/sweep_selective.py's BWD
    ("bwd tn4 w1 (the default)", {}),
    ("bwd tn4 w4", dict(tn=4, num_warps=4)),
    ("bwd tn4 w2", dict(tn=4, num_warps=2)),
    ("bwd tn8 w4", dict(tn=8, num_warps=4)),
    ("bwd tn8 w2", dict(tn=8, num_warps=2)),
    ("bwd tn8 w1", dict(tn=8, num_warps=1)),
    ("bwd tn4 w1 share0", dict(share=0)),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labels", nargs="*", help="keep the configs whose label contains one of these")
    ap.add_argument("--dump", help="write each config's TTGIR, PTX and SASS here")
    ap.add_argument("--bwd", action="store_true", help="the backward kernel's configs instead")
    ap.add_argument("--ladder", action="store_true", help="chapter 7's ladder (sweep_selective.RUNGS) instead")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--book", help="write the forward, ladder and backward tables to this JSON file (chapter 7 "
                    "reads book/data/benchmarks/logs/compile_selective-sm90-triton-<version>.json)")
    args = ap.parse_args()
    if args.book:
        return book_tables(args.book)
    print(f"triton {triton.__version__}, sm_90, B{SHAPE['B']} D{SHAPE['D']} L{SHAPE['L']} N{SHAPE['N']} bf16")
    print(f"{'config':32s} regs spill w/SM  smem | loop: instr MUFU(ex2/rcp/lg2) FFMA SHFL LDS/STS BAR "
          "| instr/el MUFU/el t_issue t_mufu pred (us)")
    if args.ladder:
        from benchmarks.sweep_selective import RUNGS

        configs = [(label, kind, knobs) for label, kind, knobs, _, _ in RUNGS]
    elif args.bwd:
        configs = [(label, "bwd", knobs) for label, knobs in BWD_CONFIGS]
    else:
        configs = [(label, "fwd", knobs) for label, knobs in CONFIGS]
    rows = []
    for label, kind, knobs in configs:
        if not args.labels or any(s in label for s in args.labels):
            try:
                m = measure(label, kind, knobs, dump=args.dump)
                rows.append(m)
                print(fmt(m), flush=True)
            except Exception as e:  # a config that does not compile is reported, the others go on
                print(f"{label:32s} COMPILE ERROR {type(e).__name__}: {str(e)[:300]}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(triton=triton.__version__, target="sm_90", shape=SHAPE, schedulers=SCHEDULERS,
                           clock_hz=CLOCK, rows=rows), f, indent=1)


def book_tables(path):
    """All three tables in one JSON: "forward" (CONFIGS), "rungs" (sweep_selective.RUNGS, with each rung's
    change and reason), "backward" (BWD_CONFIGS)."""
    from benchmarks.sweep_selective import RUNGS

    doc = dict(triton=triton.__version__, target="sm_90", shape=SHAPE, schedulers=SCHEDULERS, clock_hz=CLOCK,
               note="offline compile (no GPU): ptxas -v and the SASS of the main loop; per (b, d, t, n) element",
               forward=[], rungs=[], backward=[])
    for label, knobs in CONFIGS:
        doc["forward"].append(measure(label, "fwd", knobs))
        print(fmt(doc["forward"][-1]), flush=True)
    for i, (label, kind, knobs, change, reason) in enumerate(RUNGS):
        doc["rungs"].append(dict(measure(label, kind, knobs), index=i, change=change, reason=reason))
        print(fmt(doc["rungs"][-1]), flush=True)
    for label, knobs in BWD_CONFIGS:
        doc["backward"].append(measure(label, "bwd", knobs))
        print(fmt(doc["backward"][-1]), flush=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
