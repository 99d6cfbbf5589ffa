"""The Mamba-3 kernels compiled for an H100 without one: registers, spills, shared memory, warps per SM.

    python benchmarks/compile_mamba3.py [LABEL ...] [--dump DIR]

Compiles each kernel of kernels/mamba3*.py for sm_90 (Triton's compiler and the ptxas of its wheel: no
GPU needed) as its launcher would at the goal shape B4 L4096 H32 P64 N128 G1 (MIMO: R = 4), for every
configuration the sweep (benchmarks/sweep_mamba3.py) times, and prints one line per configuration:
registers per thread, spill stores/loads (bytes), shared memory per block (bytes; an H100 block may use
at most 227 KiB), the blocks per SM that registers and shared memory allow, and the number of programs.
LABEL keeps the configurations whose label contains it; --dump writes TTGIR, PTX and SASS to DIR.
"""
import argparse
import importlib
import inspect
import os

os.environ["TRITON_INTERPRET"] = "0"  # before the kernels are imported: compile, never interpret

import torch  # noqa: E402
import triton  # noqa: E402

import sm90  # noqa: E402  (benchmarks/sm90.py: this script's folder is on sys.path)

SMEM_LIMIT = 227 * 1024
GOAL = dict(b=4, L=4096, H=32, P=64, N=128, G=1)
TY = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}


def compile_kernel(fn, pointers, ints, constexprs, num_warps, num_stages, dump=None, label="k"):
    """Compile ``fn`` as the JIT would specialise it (``sm90.signature``). Returns (registers, (spill stores,
    loads), shared bytes, SASS); ``dump`` also writes TTGIR, PTX and SASS there."""
    k, regs, spill, sass = sm90.compile_sm90(fn, *sm90.signature(fn, constexprs, pointers, ints), num_warps, num_stages)
    if dump:
        sm90.dump(k, sass, dump, label)
    return regs, spill, k.metadata.shared, sass


def _fake(shape, dtype):
    """A meta tensor: the launchers' shape logic runs, nothing is allocated."""
    return torch.empty(shape, dtype=dtype, device="meta")


def _mod(name):
    return importlib.import_module(f"ssm_edu.kernels.{name}")


def fwd_config(R=None, dtype=torch.bfloat16, save=False, **knobs):
    """The forward kernel's compile arguments at the goal shape (R: MIMO rank, None for SISO); with
    ``save`` as the forward pass of training launches it (the backward's rows per chunk, 8 warps)."""
    fwd_mod = _mod("mamba3")
    if save:
        knobs = _mod("mamba3_bwd").training_knobs(knobs)
    s = GOAL
    RR = R or 1
    x = _fake((s["b"], s["L"], s["H"], RR, s["P"]), dtype)
    meta, n_chunks, extra = fwd_mod.launch_config(x, s["N"], 64, RR, **knobs)
    ty = TY[torch.float32 if meta["F32"] else dtype]
    pointers = dict(x_ptr=f"*{ty}", dt_ptr="*fp32", A_ptr="*fp32", lam_ptr="*fp32", theta_ptr="*fp32",
                    B_ptr=f"*{ty}", C_ptr=f"*{ty}", D_ptr="*fp32", z_ptr=f"*{ty}", h0_ptr="*fp32",
                    psi0_ptr="*fp32", y_ptr=f"*{ty}", hT_ptr="*fp32", psiT_ptr="*fp32", Sc_ptr=f"*{ty}",
                    Pc_ptr="*fp32")
    ints = dict(L=s["L"], H=s["H"], HPG=s["H"] // s["G"], G=s["G"], R=RR, P=s["P"], N2=s["N"] // 2,
                n_chunks=n_chunks)
    ce = dict(meta, HAS_D=True, HAS_Z=False, HAS_H0=False, HAS_PSI0=False, STORE_FINAL=save, SAVE=save)
    programs = s["b"] * s["H"] * -(-s["P"] // meta["BLOCK_P"])
    return fwd_mod._mamba3_fwd, pointers, ints, ce, extra, programs


def bwd_config(kernel="chunk", R=None, dtype=torch.bfloat16, part=0, **knobs):
    """The backward kernels' compile arguments at the goal shape: kernel "state" or "chunk"."""
    bwd_mod = _mod("mamba3_bwd")
    s = GOAL
    RR = R or 1
    x = _fake((s["b"], s["L"], s["H"], RR, s["P"]), dtype)
    meta, n_chunks, st, ck = bwd_mod.bwd_launch_config(x, s["N"], 64, RR, G=s["G"], **knobs)
    ty = TY[torch.float32 if meta["F32"] else dtype]
    fn = bwd_mod._mamba3_bwd_state if kernel == "state" else bwd_mod._mamba3_bwd_chunk
    low = ("x_ptr", "B_ptr", "C_ptr", "z_ptr", "gy_ptr", "Sc_ptr", "dSc_ptr", "dx_ptr", "dz_ptr")
    pointers = {name: (f"*{ty}" if name in low else "*fp32")
                for name in inspect.signature(fn.fn).parameters if name.endswith("_ptr")}
    ints = dict(L=s["L"], H=s["H"], HPG=s["H"] // s["G"], G=s["G"], R=RR, P=s["P"], N2=s["N"] // 2,
                n_chunks=n_chunks)
    if kernel == "state":
        launch = dict(st)
        ints["n_pb"] = -(-s["P"] // launch["BLOCK_P"])
        ce = dict(meta, HAS_Z=True, HAS_H0=False, HAS_DHT=False, BLOCK_P=launch.pop("BLOCK_P"))
        programs = s["b"] * s["H"] * ints["n_pb"]
    else:
        parts = dict(ck)
        the_part = part if part in parts else 2
        launch = dict(parts[the_part])
        ints["n_pb"] = -(-s["P"] // st["BLOCK_P"])
        ce = dict(meta, HAS_D=True, HAS_Z=True, HAS_K0=False, BLOCK_P=launch.pop("BLOCK_P"),
                  HEADS=launch.pop("HEADS"), ATOMIC=launch.pop("ATOMIC"), BLOCK_PB=max(2, ints["n_pb"]),
                  PART=the_part)
        programs = n_chunks * s["b"] * s["G"] * (s["H"] // s["G"]) // ce["HEADS"]
    return fn, pointers, ints, ce, launch, programs


def step_config(R=None, batch=64, **knobs):
    step_mod = _mod("mamba3_step")
    s = GOAL
    RR = R or 1
    meta, extra = step_mod.step_launch_config(s["P"], s["N"], RR, batch * s["H"], **knobs)
    pointers = {name: "*fp32" for name in inspect.signature(step_mod._mamba3_step.fn).parameters
                if name.endswith("_ptr")}
    for name in ("x_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr"):
        pointers[name] = "*bf16"
    ints = dict(H=s["H"], HPG=s["H"] // s["G"], G=s["G"], R=RR, P=s["P"], N2=s["N"] // 2)
    ce = dict(meta, HAS_D=True, HAS_Z=False)
    programs = batch * s["H"] * -(-s["P"] // meta["BLOCK_P"])
    return step_mod._mamba3_step, pointers, ints, ce, extra, programs


def first_config():
    first_mod = _mod("mamba3_first")
    s = GOAL
    pointers = {name: "*fp32" for name in inspect.signature(first_mod._mamba3_first.fn).parameters
                if name.endswith("_ptr")}
    ints = dict(L=s["L"], H=s["H"], HPG=s["H"] // s["G"], G=s["G"], P=s["P"], N2=s["N"] // 2)
    ce = dict(BLOCK_P=first_mod.BLOCK_P, BLOCK_N2=s["N"] // 2)
    return first_mod._mamba3_first, pointers, ints, ce, dict(num_warps=4, num_stages=1), s["b"] * s["H"] * 4


def rotate_config(kernel="fwd", dtype=torch.bfloat16, tiles=False, joined=False):
    """The rotation kernels of the path through SSD (kernels/mamba3_ssd.py) at the goal shape, as the path
    launches them: tiles that divide SSD's backward chunk; the backward reads float32 dL/dk̃, dL/dq as SSD's
    backward leaves them there (three parts of dL/dk̃, one of dL/dq, summed as they are read) and
    restarts its sums at every chunk boundary (``tiles``: one program per tile, as the forms "tiles" and
    "joined" run it). ``joined``: contiguous rows split into pairs in registers (the form "joined")."""
    rot = _mod("mamba3_ssd")
    s = GOAL
    Q = _mod("ssd").bwd_chunk_len(64, dtype, s["N"])
    BLOCK_L, BLOCK_I = rot._blocks(s["N"] // 2, Q)
    fn = dict(fwd=rot._rotate_fwd, bwd=rot._rotate_bwd, tiles=rot._rotate_tiles, sums=rot._tile_sums)[kernel]
    low = ("B_ptr", "C_ptr", "k_ptr", "q_ptr")
    pointers = {name: (f"*{TY[dtype]}" if name in low else "*fp32")
                for name in inspect.signature(fn.fn).parameters if name.endswith("_ptr")}
    n_iblk = -(-(s["N"] // 2) // BLOCK_I)
    ints = dict(L=s["L"], H=s["H"], G=s["G"], N2=s["N"] // 2, n_tiles=-(-s["L"] // BLOCK_L), n_iblk=n_iblk, Q=Q,
                n_dk=3, n_dq=1, dk_row=4 * s["H"] * s["N"], dq_row=4 * s["H"] * s["N"])
    flags = dict(fwd={"HAS_PSI0": False}, bwd={"HAS_GPSI": False, "HAS_BOUNDS": True, "TILES": tiles}).get(kernel, {})
    if joined:
        flags["JOINED"] = True
    ce = dict(BLOCK_L=BLOCK_L, BLOCK_I=BLOCK_I, **flags)
    ints = {k: v for k, v in ints.items() if k in inspect.signature(fn.fn).parameters}
    programs = s["b"] * s["H"] * n_iblk * (ints["n_tiles"] if kernel in ("tiles", "sums") or tiles else 1)
    return fn, pointers, ints, ce, dict(num_warps=4, num_stages=1), programs


def rotate_heads_config(heads=0, joined=True, stages=None):
    """The rotation's tiled backward with a loop over heads (``_rotate_bwd_heads``) at the goal shape, as
    ``_rotate_backward`` launches it for ``rotate=dict(form=..., bwd_heads=heads)`` (0: the automatic choice
    on an H200's 132 SMs, all 32 heads of the group: plain stores of dB, dC); ``stages``: the head loop's
    pipeline depth (``ROT_BWD_STAGES`` by default; 1: no loads ahead)."""
    rot = _mod("mamba3_ssd")
    s = GOAL
    Q = _mod("ssd").bwd_chunk_len(64, torch.bfloat16, s["N"])
    BLOCK_L, BLOCK_I = rot._blocks(s["N"] // 2, Q)
    n_iblk, n_tiles, hpg = -(-(s["N"] // 2) // BLOCK_I), -(-s["L"] // BLOCK_L), s["H"] // s["G"]
    heads = heads or rot._auto_heads(hpg, s["b"] * s["G"] * n_iblk * n_tiles, torch.device("meta"))
    n_hblk = hpg // heads
    fn = rot._rotate_bwd_heads
    pointers = {name: ("*bf16" if name in ("B_ptr", "C_ptr") else "*fp32")
                for name in inspect.signature(fn.fn).parameters if name.endswith("_ptr")}
    ints = dict(L=s["L"], H=s["H"], G=s["G"], N2=s["N"] // 2, n_tiles=n_tiles, n_iblk=n_iblk, n_hblk=n_hblk,
                dk_row=4 * s["H"] * s["N"], dq_row=4 * s["H"] * s["N"])
    ce = dict(N_DK=3, N_DQ=1, HEADS=heads, HAS_GPSI=False, BLOCK_L=BLOCK_L, BLOCK_I=BLOCK_I, JOINED=joined,
              ATOMIC=n_hblk > 1, STAGES=stages or rot.ROT_BWD_STAGES)
    programs = s["b"] * s["G"] * n_hblk * n_iblk * n_tiles
    return fn, pointers, ints, ce, dict(num_warps=4, num_stages=1), programs


def fused_rot_config(dtype=torch.bfloat16, z=False, state=False, **knobs):
    """The forward with the rotation inside the chunk walk (kernels/mamba3_ssd_fwd.py) at the goal shape, as
    ``fused_forward`` launches it (with D; z: the gate too; state: an initial state and angle, and the final
    ones stored). ``knobs``: block_p, block_q, num_warps, num_stages, fast_trig, as the sweep's variants pass
    them."""
    mod = _mod("mamba3_ssd_fwd")
    s = GOAL
    x = _fake((s["b"], s["L"], s["H"], s["P"]), dtype)
    meta, extra = mod.launch_config(x, s["N"], 64, **knobs)
    fn = mod._m3_ssd_fwd
    low = ("x_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr")
    pointers = {name: (f"*{TY[dtype]}" if name in low else "*fp32")
                for name in inspect.signature(fn.fn).parameters if name.endswith("_ptr")}
    ints = dict(L=s["L"], H=s["H"], G=s["G"], P=s["P"], N2=s["N"] // 2, n_chunks=-(-s["L"] // meta["BLOCK_Q"]))
    ce = dict(meta, HAS_D=True, D_PER_DIM=False, HAS_Z=z, HAS_H0=state, HAS_PSI0=state, STORE_STATE=state,
              IEEE=dtype == torch.float32)
    programs = s["b"] * s["H"] * -(-s["P"] // meta["BLOCK_P"])
    return fn, pointers, ints, ce, extra, programs


def block_step_config(P=64, N=64, H=24, dtype=torch.bfloat16):
    """The fused decoding step of the Mamba-3 block (kernels/mamba3_block_step.py), as chapter 10's decode
    benchmark builds the block (d_model 768: 24 heads of P = 64, N = 64), batch 1."""
    mod = _mod("mamba3_block_step")
    fn = mod._mamba3_block_step
    pointers = {name: ("*fp32" if name in ("h_ptr", "angle_ptr", "k_ptr", "xc_ptr") else f"*{TY[dtype]}")
                for name in inspect.signature(fn.fn).parameters if name.endswith("_ptr")}
    d_proj = 2 * H * P + 2 * N + 3 * H + N // 4
    ints = dict(stride_b=d_proj, H=H, HPG=H, G=1, P=P, N2=N // 2, S=N // 4, eps=1e-5, A_floor=1e-4)
    ce = dict(HEAVY_TAIL=True, BLOCK_P=P, BLOCK_N2=N // 2)
    return fn, pointers, ints, ce, dict(num_warps=4 if P * N <= 64 * 128 else 8, num_stages=1), H


def mamba2_step_config(kernel="ssm", P=64, N=64, H=24, dtype=torch.bfloat16):
    """The Mamba-2 block's fused decoding step (kernels/mamba2_block_step.py), at chapter 10's decode shape
    (d_model 768: 24 heads of P = 64, N = 64, one group, a conv of width 4), batch 1."""
    mod = _mod("mamba2_block_step")
    fn = {"conv": mod._conv_step, "ssm": mod._ssm_step, "norm": mod._gated_norm}[kernel]
    low = ("proj_ptr", "conv_ptr", "w_ptr", "bias_ptr", "dt_bias_ptr", "A_log_ptr", "D_ptr", "wt_ptr", "out_ptr")
    pointers = {name: (f"*{TY[dtype]}" if name in low else "*fp32")
                for name in inspect.signature(fn.fn).parameters if name.endswith("_ptr")}
    Din, conv_dim = H * P, H * P + 2 * N
    ints = dict(stride_b=2 * Din + 2 * N + H, d_inner=Din, conv_dim=conv_dim, H=H, HPG=H, G=1, P=P, N=N, eps=1e-5)
    ints = {k: v for k, v in ints.items() if k in inspect.signature(fn.fn).parameters}
    ce, programs = {
        "conv": (dict(W=4, BLOCK_W=4, BLOCK_C=mod.BLOCK_C), -(-conv_dim // mod.BLOCK_C)),
        "ssm": (dict(BLOCK_P=P, BLOCK_N=N), H),
        "norm": (dict(BLOCK_H=32, BLOCK_S=2048), 1)}[kernel]
    return fn, pointers, ints, ce, dict(num_warps=4, num_stages=1), programs


CONFIGS = [  # (label, builder, arguments): the defaults, then the sweep's variants (benchmarks/sweep_mamba3.py)
    ("fwd bf16 default", fwd_config, {}),
    ("fwd bf16 bp64", fwd_config, dict(block_p=64)),
    ("fwd bf16 rows16", fwd_config, dict(max_rows=16)),
    ("fwd bf16 rows64 w8", fwd_config, dict(max_rows=64, num_warps=8)),
    ("fwd bf16 w8 bp64", fwd_config, dict(num_warps=8, block_p=64)),
    ("fwd bf16 stages1", fwd_config, dict(num_stages=1)),
    ("fwd bf16 exact trig", fwd_config, dict(fast_trig=False)),
    ("fwd fp32 (tf32x3)", fwd_config, dict(dtype=torch.float32)),
    ("fwd mimo R4 bf16", fwd_config, dict(R=4)),
    ("fwd mimo R4 rows64 w8", fwd_config, dict(R=4, max_rows=64, num_warps=8)),
    ("fwd training (saves S)", fwd_config, dict(save=True)),
    ("fwd training rows16", fwd_config, dict(save=True, bwd_max_rows=16)),
    ("fwd training rows64", fwd_config, dict(save=True, bwd_max_rows=64)),
    ("bwd state default", bwd_config, dict(kernel="state")),
    ("bwd state bp32 w8", bwd_config, dict(kernel="state", state_block_p=32, state_warps=8)),
    ("bwd state rows16", bwd_config, dict(kernel="state", max_rows=16)),
    ("bwd state rows64", bwd_config, dict(kernel="state", max_rows=64)),
    ("bwd state fp32", bwd_config, dict(kernel="state", dtype=torch.float32)),
    ("bwd chunk dq,dk default", bwd_config, {}),
    ("bwd chunk dx default", bwd_config, dict(part=1)),
    ("bwd chunk dq,dk group", bwd_config, dict(heads=0)),
    ("bwd chunk dx one head", bwd_config, dict(part=1, x_heads=1)),
    ("bwd chunk one launch", bwd_config, dict(split=False)),
    ("bwd chunk dq,dk rows16", bwd_config, dict(max_rows=16)),
    ("bwd chunk dx rows16", bwd_config, dict(part=1, max_rows=16)),
    ("bwd chunk dq,dk rows64", bwd_config, dict(max_rows=64)),
    ("bwd chunk dx rows64", bwd_config, dict(part=1, max_rows=64)),
    ("bwd chunk dq,dk w4", bwd_config, dict(chunk_warps=4)),
    ("bwd chunk dx w4", bwd_config, dict(part=1, chunk_warps=4)),
    ("bwd chunk dq,dk fp32", bwd_config, dict(dtype=torch.float32)),
    ("bwd chunk dx fp32", bwd_config, dict(part=1, dtype=torch.float32)),
    ("bwd chunk dq,dk mimo R4", bwd_config, dict(R=4)),
    ("bwd chunk dx mimo R4", bwd_config, dict(part=1, R=4)),
    ("step R1 B64", step_config, dict(R=1)),
    ("step R4 B64", step_config, dict(R=4)),
    ("step R4 B1", step_config, dict(R=4, batch=1)),
    ("step R1 B64 joined", step_config, dict(R=1, joined=True)),
    ("step R4 B64 joined", step_config, dict(R=4, joined=True)),
    ("first kernel (fp32)", first_config, {}),
    ("ssd path: rotate fwd", rotate_config, {}),
    ("ssd path: rotate bwd", rotate_config, dict(kernel="bwd")),
    ("ssd path: rotate tiles", rotate_config, dict(kernel="tiles")),
    ("ssd path: tile sums", rotate_config, dict(kernel="sums")),
    ("ssd path: rotate bwd tiles", rotate_config, dict(kernel="bwd", tiles=True)),
    ("ssd path: rotate tiles joined", rotate_config, dict(kernel="tiles", joined=True)),
    ("ssd path: rotate bwd joined", rotate_config, dict(kernel="bwd", tiles=True, joined=True)),
    ("ssd path: rot bwd heads32", rotate_heads_config, {}),
    ("ssd path: rot bwd heads32 s1", rotate_heads_config, dict(stages=1)),
    ("ssd path: rot bwd heads32 s2", rotate_heads_config, dict(stages=2)),
    ("ssd path: rot bwd heads8", rotate_heads_config, dict(heads=8)),
    ("ssd path: rot bwd heads32 tiles", rotate_heads_config, dict(joined=False)),
    ("fused rot fwd default", fused_rot_config, {}),
    ("fused rot fwd gate", fused_rot_config, dict(z=True)),
    ("fused rot fwd gate, states", fused_rot_config, dict(z=True, state=True)),
    ("fused rot fwd q64 bp32 w8", fused_rot_config, dict(block_q=64, block_p=32)),
    ("fused rot fwd q64 bp32 w4", fused_rot_config, dict(block_q=64, block_p=32, num_warps=4)),
    ("fused rot fwd q32 bp32 w4", fused_rot_config, dict(block_q=32, block_p=32, num_warps=4)),
    ("fused rot fwd q64 bp64 w8", fused_rot_config, dict(block_q=64)),
    ("fused rot fwd stages1", fused_rot_config, dict(num_stages=1)),
    ("fused rot fwd fp32", fused_rot_config, dict(dtype=torch.float32)),
    ("fused rot fwd exact trig", fused_rot_config, dict(fast_trig=False)),
    ("block step P64 N64 (decode)", block_step_config, {}),
    ("block step P64 N128", block_step_config, dict(N=128)),
    ("mamba2 step: conv", mamba2_step_config, dict(kernel="conv")),
    ("mamba2 step: state", mamba2_step_config, dict(kernel="ssm")),
    ("mamba2 step: gated norm", mamba2_step_config, dict(kernel="norm")),
]


def row(label, builder, kw, dump=None):
    fn, pointers, ints, ce, extra, programs = builder(**kw)
    warps, stages = extra.get("num_warps", 4), extra.get("num_stages", 1)
    regs, spill, smem, _ = compile_kernel(fn, pointers, ints, ce, warps, stages, dump, label)
    by_regs = 65536 // (max(regs, 1) * 32 * warps)
    by_smem = SMEM_LIMIT // smem if smem else 99
    ok = "ok" if smem <= SMEM_LIMIT and spill == (0, 0) else "CHECK"
    blocks = {k: v for k, v in ce.items() if k.startswith("BLOCK") or k in ("RP", "F32", "FAST")}
    return (f"{label:28s} {regs:4d} {spill[0]:5d}/{spill[1]:<5d} {smem:7d} {min(by_regs, by_smem):3d} "
            f"{programs:6d} w{warps} s{stages} {ok:5s} {blocks}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labels", nargs="*", help="keep the configurations whose label contains one of these")
    ap.add_argument("--dump", help="write each configuration's TTGIR, PTX and SASS here")
    args = ap.parse_args()
    print(f"triton {triton.__version__}, sm_90, B{GOAL['b']} L{GOAL['L']} H{GOAL['H']} P{GOAL['P']} N{GOAL['N']}")
    print(f"{'config':28s} regs spill(st/ld)  smem  blk/SM progs")
    for label, builder, kw in CONFIGS:
        if not args.labels or any(s in label for s in args.labels):
            try:
                print(row(label, builder, kw, args.dump), flush=True)
            except Exception as e:  # a configuration that does not compile is reported, the others go on
                print(f"{label:28s} COMPILE ERROR {type(e).__name__}: {str(e)[:400]}", flush=True)


if __name__ == "__main__":
    main()
