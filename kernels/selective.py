"""Triton selective scan (Mamba-1, chapter 7): forward and backward.

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t,    y_t = <h_t, C_t> + D x_t,  then y_t · silu(z_t)

Work split. One program per (batch element, group, block of BLOCK_D channels
of that group); a block never straddles two groups, so it reads one row of
B and C. The program walks L in blocks of BLOCK_L steps: it loads u, delta
(BLOCK_D, BLOCK_L) and B, C (N, BLOCK_L), forms the steps
(a, b) = (exp(Δ A), Δ B x), scans them along t with ``tl.associative_scan``
and the combine of chapter 6, (a, b) ∘ (a', b') = (a' a, a' b + b'), adds the
carried state, reduces over N against C and writes y. Three forms of the block
(the ``variant`` argument; all compute the same thing):

* ``"rows"`` (the default for N <= 32 where "nsplit" is not, see below): tiles (N, BLOCK_D, BLOCK_L) with
  BLOCK_L = 4 steps (for N = 16), at most one memory vector. Triton spreads
  a load over threads along its contiguous axis (t) first and then along the
  axis before it (d); a block this short fits in one thread's vector, so
  each thread owns whole (N, BLOCK_L) slabs of its channels: the scan over
  t, the sum over n and the carry stay inside the thread (no shuffles). The
  carry enters through the block's first step, b_0 <- a_0 h + b_0, so only
  the b-part of the scan is used. The slab must fit in registers: N·BLOCK_L
  = 64 values per array does, 128 spills.
* ``"nsplit"``: tiles (N / TN, TN, BLOCK_D, BLOCK_L), TN threads per channel
  along N (knob ``tn``; 2 by default), each scanning N / TN modes over t in
  registers; y sums its modes in the thread and then over the TN threads
  (log2 TN shuffles per (d, t)). One warp per program (BLOCK_D = 32 / TN
  channels), so the grid holds TN times the threads of "rows" (B·D·TN:
  16 warps per SM at the goal shape instead of 4, the diagnosis of "rows"
  being latency: one warp per scheduler waits ~1 us per block for its
  loads) and ~96 registers instead of ~190. The price: the per-(d, t) work
  (loads of u, Δ, z, the softplus, the gate: ~5 MUFU operations next to the
  16 exp2) is repeated by the TN threads. B and C are loaded (N, BLOCK_L)
  and reshaped, so that their load does not impose its layout on the block.
* ``"nloop"``: a loop over the N state modes (unrolled), each scanning a
  (BLOCK_D, BLOCK_L) tile and accumulating its share of y, the loop order of
  mamba_ssm's CUDA kernel. Tiles are wide in t, so the scan crosses threads.
  "rows" asked for with N > 32 falls back to it; the launcher's own choice
  there is "nsplit" with 4 modes per thread (``_default_variant``: the
  unrolled loop compiles for over a minute at N = 64 and spills). (Training's
  forward is "nsplit": see Backward.)

Knobs of "rows" and "nsplit" (``selective_scan_fwd`` arguments, for the
benchmarks): ``prefetch`` 1 loads the next block's u, Δ, z at the top of the
loop body (loop-carried), so that the loads overlap this block's work; 2 also
B, C. ``even`` (decided by the launcher): when the blocks tile L and D
exactly and BLOCK_N = N, no masks (fewer instructions and registers); the
prefetch of the last block then reloads it rather than read past L.

Measured on an H100 80GB HBM3 (torch 2.11, Triton 3.6, 2026-11-28), batch
8, D = 2048, L = 2048, N = 16, bfloat16 with D, z, delta_bias and softplus,
forward, each output checked against the vectorized form (relative error
1.7e-3) before timing (medians of ``triton.testing.do_bench``):

    "nsplit" TN 2, BLOCK_L 8, prefetch 1    408 us   <- the default here (``_default_variant``)
    "nsplit" TN 2, no prefetch              439 us
    "rows" prefetch 2                       515 us
    "nsplit" TN 4 (BLOCK_L 4, 8 or 16)      560-602 us
    "rows" prefetch 1                       569 us
    "rows" (mask-free / masked)             611 / 630 us
    "nsplit" TN 8                           910 us
    "nloop"                                 997 us
    "rows" BLOCK_L 16 or BLOCK_D 64         1159 / 2262 us (spills, or too few threads)

mamba_ssm's CUDA kernel took 532 us (earlier run, same GPU). So more threads
hide latency (TN = 2 beats "rows"), but TN = 4 already loses to the repeated
per-(d, t) work, as the floors below predict. The goal of 256 us (half the
exp floor) needs that work done once per (d, t) and shared, and part of the
exp2 moved to an FMA polynomial. Floors: 128 us for one exp2 per (b, d, t, n) at the H100's 4.2e12
per second; with the softplus and the gate (exp2, lg2, rcp, exp2, rcp per
(d, t)) 21 MUFU operations per (d, t), 168 us ("nsplit", TN = 4: 36, 288 us;
TN = 2: 26, 208 us). Bytes: u, Δ, z, y (b·D·L each) and B, C (b·N·L each),
about 270 MB, 85 us of HBM. Forward plus backward (training, below): 2230 us on an H100, against 3018 us
for mamba_ssm's CUDA kernels in the same run (benchmarks/sweep_selective.py, torch 2.11, Triton 3.6).
Offline sm_90 compile (ptxas -v, goal shape, Triton 3.6): "rows" BLOCK_D 128,
4 warps: 190 registers masked, 168 even, 238 with prefetch 1; "nsplit" TN = 4,
BLOCK_L = 8, 1 warp: 80 registers, 96 with prefetch; no spills.

Knobs of "nsplit" towards the goal (timed on an H100 in the table below; not yet the default, see
``DEFAULT_NSPLIT``):

* ``share`` 1: the per-(d, t) work once per (d, t). u, Δ, z are loaded as (BLOCK_D, BLOCK_L) tiles, one
  element per thread; softplus, Δ u, D u, the gate and the store happen there; Δ and Δ u go to the TN
  threads of their channel through a layout conversion (shared memory), and y comes back after its sum
  over modes. Triton's layout pass would otherwise move the conversion up to the loaded bf16 tiles and
  compute the softplus in the replicated layout (seen in the TTGIR); ``_pin`` (a sum over an axis of
  size 1) stops it. 2: also B, C converted to float32 once per element before they are spread.
  (A pre-pass writing softplus(Δ + bias) and Δ u to memory would cost about 270 MB more traffic,
  ~85 us, against ~20-40 us of instructions it saves: not built.)
* ``softplus_poly``: log1p(w) = 2 atanh(w / (2 + w)), a degree-6 odd series: one exp2 and one division,
  no logf (libdevice, ~20 instructions); relative error below 5e-7 (3.0e-7 measured in the interpreter),
  plus up to 1.4e-7 |x| for x < 0 on a GPU, where exp's argument is rounded (as in ``_softplus``).
* ``exp_poly`` k: 2^x of every k-th mode (1: all) by ``_exp2_poly`` on the FMA units (Cody-Waite:
  2^round(x) by an integer add on the bits, a degree-6 minimax polynomial for the fraction; 13
  instructions in place of one MUFU.EX2); relative error below 2e-7 (9.7e-8 measured), 0 below 2^-126.

The offline sm_90 compile (Triton 3.6, ptxas; benchmarks/compile_selective.py) counts, per iteration of the main
loop, SASS instructions and MUFU operations per (b, d, t, n) element (warp instructions per element,
elements per warp-iteration = BLOCK_D BLOCK_L N / warps):

    config (BLOCK_L 8, prefetch 1)            regs  instr/elem  MUFU/elem   warps/SM   measured
    "nsplit" TN 2 (the default)                128     0.545       0.047         8       408 us
    "nsplit" TN 4                               96     0.838       0.063        16    560-602 us
    TN 2 share 1 + softplus_poly               128     0.372       0.039         8       358 us
    TN 2 share 2 + softplus_poly               166     0.342       0.039         8       397 us
    TN 4 share 1 + softplus_poly               122     0.448       0.039        16       385 us
    TN 4 share 2 + softplus_poly, 2 warps      128     0.370       0.039        16       464 us
    TN 4 share 2 + softplus_poly, 4 / 8 warps  128     0.354       0.039        16       417 us (4)
    TN 4 share 2 + softplus_poly + exp_poly 4  128     0.465       0.031        16

The measured times of the first two are 1.30 and 1.2 times the issue time at 1.755 GHz (instructions /
(528 schedulers)); the same factors predicted 235-265 us for the share 2 forms (MUFU pipe alone: 181 us),
and ``exp_poly`` to lose: it moves work from the MUFU pipe, which is not the limit, to the issue
slots, which are. Measured (benchmarks/sweep_selective.py; H100, torch 2.11, Triton 3.6, goal shape) the
shared forms run at 1.5 to 2.2 times their issue time, not 1.2-1.3: fewer instructions, and more waiting
(not profiled yet; the likely wait is the layout conversions through shared memory that spread Δ and Δ u to
the TN threads of a channel). The
best, TN 2 share 1 with the log-free softplus: 358 us, 36% of the 128 us floor (TN 2 with
``softplus_poly`` alone: 376 us); float32 against float64 1.8e-7 in the interpreter, as without the knobs
(1.5e-7). At B8 D4096 L2048 the share 2 form lost to TN 2 without knobs (805 against 745 us); share 1 was not
timed at the other shapes.

Where the state lives. The carry h (BLOCK_D, N) stays in registers, in
float32, for the whole sequence; the scanned block lives in registers while
the scan runs. Positions past L are loaded as the identity step (Δ = 0: a = 1,
b = 0), so any L works and the carry is the state at the last real step.

What moves through memory. u, delta, B, C, z are read once and y is written
once (plus the last state, (batch, D, N)); nothing of size
(batch, D, N, L) touches global memory. This makes the kernel compute bound:
for each (b, d, t, n) one exponential (exp2 with log2 e folded into A by the
launcher) and a handful of multiply-adds.

Segments ("nsplit", knob ``segments``). The grid is (channel blocks, groups, batch): at batch 1 with few
channels and a long sequence (B1 D1024 L65536: 64 one-warp programs for 132 SMs) the GPU is mostly idle. The
sequence is then cut into S segments run side by side, in two passes: pass 1 scans each segment from a zero
state and keeps its last state h_end[s] and Σ Δ over it; pass 2 starts segment s from
h_in[s] = exp(A Σ Δ[s-1]) h_in[s-1] + h_end[s-1] (the product of the decays over a segment is the
exponential of A times the sum of the steps), computed by each program from the earlier segments' results.
Twice the exponentials, S times the programs; automatic on a GPU below 4 warps per SM (``_segments``).

Backward. Training runs the forward as "nsplit" with ``save_checkpoints``: the state h_{start-1} at the start
of every block of BLOCK_L = 8 steps, (batch, D, n_blocks, N) in float32 (b d n L / 8 numbers: 268 MB at the
goal shape, an eighth of the states). ``_selective_scan_bwd`` has one program per (batch, group, BLOCK_D
channels) and walks the blocks from the last to the first. Tiles (NPT, BLOCK_D, TN, BLOCK_L): TN threads per
channel along N (4 by default), NPT modes and the block's steps in each thread's registers. For block k:

* recompute: a_t = exp(Δ_t A) (one exponential per element, the backward's only ones), then the states from
  the checkpoint, h_t = a_t h_{t-1} + Δ_t B_t x_t, by the forward's in-thread scan;
* the adjoint g_t = dLoss/dh_t = C_t gy_t + a_{t+1} g_{t+1} (gy: dLoss/dy before the gate) from the last
  step down, with what enters from the next block, r = a g at its first step, added at the last step. The
  shift a_{t+1} costs no second exponential: the loop runs over the block's steps, unrolled, and picks a
  thread's register column by column (``_column``). (Triton's reverse ``tl.associative_scan`` would do the
  same with warp shuffles even along an in-thread axis: 240 of 700 shuffles per block in an earlier form.)
* the gradients: dB_t = Σ_d g_t Δ_t x_t and dC_t = Σ_d gy_t h_t (sums over the program's channels, written
  per program and summed by the launcher), d(Δ x)_t = <g_t, B_t>, dlog_t = g_t (h_t - Δ_t B_t x_t)
  (= dLoss/d(Δ_t A) = g_t a_t h_{t-1}), dA = Σ_t dlog_t Δ_t, dΔ_t = d(Δ x)_t x_t + <dlog_t, A>, then
  softplus' derivative; dx_t = d(Δ x)_t Δ_t + D gy_t; dz from y before the gate (recomputed: <h_t, C_t>).
  The per-(d, t) work (softplus and its derivative from one exp2, the gate, the three outputs) is done once
  per (d, t) on (BLOCK_D, BLOCK_L) tiles (``share`` 1).

Offline sm_90 compile (Triton 3.7.1; ``benchmarks/compile_selective.py --bwd``): 255 registers, no spills,
about 50 lane-instructions per element, of which the sums over the channel lanes for dB and dC are the
largest part (6 shuffles and 6 adds per element by ``tl.sum``'s butterfly). Measured on an H100 (torch 2.11,
Triton 3.6) with four warps a program, forward plus backward at the goal shape: 8.5 ms (mamba_ssm's CUDA: 3.0
ms; floor 256 us), about 9 times the backward's issue-bound time: the kernel waits rather than issues. One
warp a program (the default since: no sums across warps) took the backward to 1802 us and forward plus
backward to 2230 us, against CUDA's 3018 us in the same run (benchmarks/sweep_selective.py). The four-warp
form's main loop
has 29 barriers and 17 layout conversions through shared memory per block of 8 steps, and 255 registers
leave two warps per scheduler to hide them (benchmarks/notes/selective.md: the analysis, and the knobs to
time next). A reduce-scatter of dB and dC by inline-assembly shuffles was tried and removed: which lane holds
which channel depends on the layout Triton picks for each tensor, and its run-time check saw another layout
than the data's.

Precision. Inputs float32, bfloat16 or float16 (mixed is fine: A, D and
delta_bias are usually float32); all arithmetic in float32. In Triton's CPU
interpreter, half-precision arithmetic is not supported: the launcher casts
to float32 there.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ._launch import interpreting, next_pow2

__all__ = ["selective_scan_triton", "selective_scan_fwd", "selective_scan_bwd"]

_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)
LOG2E = math.log2(math.e)
DEFAULT_VARIANT = "rows"  # forward only; training (checkpoints for the backward pass) uses "nsplit"
# The knobs of "nsplit" where it is the default (N = 16, the blocks tile D and L; see _default_variant).
# Change them only for a form measured faster on an H100 whose float32 check against float64 holds
# (benchmarks/sweep_selective.py), and keep benchmarks/compile_selective.py's table in this docstring true.
# Measured on an H100 (torch 2.11, Triton 3.6, goal shape): share 1 with softplus_poly 358 us, no knobs 408 us
# (docstring). Chapter 7's ladder ends at the default, and its committed log ends at "prefetch again" (this
# default) and "share the per-step work" (share 2): share 1 becomes the default together with a sweep whose
# ladder has it as its last rung (benchmarks/sweep_selective.py's RUNGS), so that the page and the code agree.
DEFAULT_NSPLIT = dict(tn=2, share=0, softplus_poly=False, num_warps=1)


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) first, then (a2, b2): x -> a2 (a1 x + b1) + b2
    return a2 * a1, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|); log1p(w) = log(1 + w) w / ((1 + w) - 1) keeps small w accurate
    w = tl.exp(-tl.abs(x))
    s = 1.0 + w
    log1p = tl.where(s == 1.0, w, tl.log(s) * w / (s - 1.0))
    return tl.maximum(x, 0.0) + log1p


@triton.jit
def _softplus_poly(x):
    """softplus without the log: log1p(w) = 2 atanh(f), f = w / (2 + w) in (0, 1/3] for w = e^-|x| in (0, 1].

    2 atanh(f) = 2 f (1 + f^2/3 + f^4/5 + ... + f^12/13) + R with 0 <= R / log1p(w) <= (1/9)^7 / 15 * 9/8 < 1.7e-8.
    Rounding (float32): w from ex2.approx (2 ulp), the division (div.full, 2 ulp), Horner and the last products
    (~3 ulp), and log1p(w)'s condition number w / ((1 + w) log1p(w)) <= 1: relative error of the log1p term
    below 8 ulp = 4.8e-7, hence of softplus(x) = max(x, 0) + log1p (both terms >= 0) too, plus, compiled,
    the error of w's argument: tl.exp(v) is ex2.approx(v * log2 e), the product rounded to float32 (half an
    ulp: 2^-24 |x| log2 e) with log2 e itself rounded (1.9e-8 |x|), so w is off by up to ln 2 times that,
    7.3e-8 |x| relative, and so is softplus for x << 0 (there softplus ~ w). The bound tested:
    5e-7 + 1.4e-7 max(-x, 0) (1.7e-6 predicted at x = -27.6 by a float32 emulation of the PTX; 3.0e-7
    measured in the interpreter, whose exp is exact). Checked against float64 in tests/test_selective.py over
    [-30, 30]. _softplus (tl.exp and tl.log) has the same argument error. One exp2 and one reciprocal (MUFU)
    and ~8 FMA, where _softplus adds libdevice's logf (~20 instructions) and a second division.
    """
    w = tl.exp(-tl.abs(x))
    f = w / (2.0 + w)
    f2 = f * f
    p = f2 * 0.07692307692307693 + 0.09090909090909091  # 1/13, 1/11
    p = p * f2 + 0.1111111111111111
    p = p * f2 + 0.14285714285714285
    p = p * f2 + 0.2
    p = p * f2 + 0.3333333333333333
    p = p * f2 + 1.0
    return tl.maximum(x, 0.0) + 2.0 * f * p


@triton.jit
def _exp2_poly(x):
    """2^x on the FMA units (no MUFU): 2^x = 2^j 2^f, j = round(x), f = x - j in [-1/2, 1/2].

    j by the magic-number rounding (x + 1.5 2^23: j sits in the low mantissa bits, so no float->int
    conversion), f = x - j exactly, 2^f by a degree-6 minimax polynomial (relative error 1.9e-9; evaluated in
    float32 with FMAs: 8.4e-8, i.e. below 2e-7, tested over [-126, 0] in tests/test_selective.py), 2^j by
    adding j << 23 to the polynomial's bits. x < -126 gives 0 (as ex2.approx.ftz flushes), x is clamped to
    127 (x <= 0 here: Δ >= 0 after softplus, A < 0). About 13 instructions in place of one MUFU.EX2.
    """
    x = tl.minimum(x, 127.0)
    t = x + 12582912.0  # 1.5 * 2^23: t's bits end in j (two's complement, |j| < 2^22)
    j = t - 12582912.0
    f = x - j
    p = f * 0.00015345805149991065 + 0.0013399930903688073
    p = p * f + 0.009618489071726799
    p = p * f + 0.05550328642129898
    p = p * f + 0.24022646248340607
    p = p * f + 0.6931471824645996
    p = p * f + 1.0
    bits = p.to(tl.int32, bitcast=True) + (t.to(tl.int32, bitcast=True) << 23)  # 0x4B400000 << 23 == 0 mod 2^32
    return tl.where(x < -126.0, 0.0, bits.to(tl.float32, bitcast=True))


@triton.jit
def _pin(x):
    """x (rows, cols), left in its layout: an inclusive sum over a new axis of size 1 (free: no arithmetic).

    Triton's layout pass rematerialises chains of elementwise ops in the layout of their use; a scan is not
    rematerialised, so what comes before stays in x's layout. Without it the pass converts the loaded bf16
    tiles to the scan's (TN-replicated) layout and computes the softplus there, TN times per (d, t)
    (checked in the TTGIR; a non-pure inline-asm move does not stop it).
    """
    return tl.reshape(tl.cumsum(x[:, :, None], axis=2), (x.shape[0], x.shape[1]))


@triton.jit
def _exp2_modes(x, EXP_POLY: tl.constexpr, NPT: tl.constexpr, TN: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_L: tl.constexpr):
    """2^x for x (NPT, TN, BLOCK_D, BLOCK_L): EXP_POLY 0 all on the MUFU (ex2.approx), 1 all by _exp2_poly,
    2 (4): modes i = 0 mod 2 (4) of each thread's NPT by _exp2_poly, the rest on the MUFU.

    The mode axis is in-thread, so the reshape / permute / split / join only rename registers.
    """
    if EXP_POLY == 0:
        e = tl.exp2(x)
    elif EXP_POLY == 1:
        e = _exp2_poly(x)
    else:
        x5 = tl.permute(tl.reshape(x, (NPT // 2, 2, TN, BLOCK_D, BLOCK_L)), (0, 2, 3, 4, 1))
        x0, x1 = tl.split(x5)  # even, odd modes (NPT // 2, TN, BLOCK_D, BLOCK_L)
        if EXP_POLY == 2:
            e0 = _exp2_poly(x0)
        else:
            y5 = tl.permute(tl.reshape(x0, (NPT // 4, 2, TN, BLOCK_D, BLOCK_L)), (0, 2, 3, 4, 1))
            y0, y1 = tl.split(y5)
            e0 = tl.join(_exp2_poly(y0), tl.exp2(y1))
            e0 = tl.reshape(tl.permute(e0, (0, 4, 1, 2, 3)), (NPT // 2, TN, BLOCK_D, BLOCK_L))
        e = tl.join(e0, tl.exp2(x1))
        e = tl.reshape(tl.permute(e, (0, 4, 1, 2, 3)), (NPT, TN, BLOCK_D, BLOCK_L))
    return e


@triton.jit
def _step(delta_ptr, bias, offs, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Δ (BLOCK_D, BLOCK_L) in float32 and the raw delta + bias (for softplus' derivative); Δ = 0 where masked."""
    raw = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += bias[:, None]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    return tl.where(mask, dt, 0.0), raw


@triton.jit
def _ld(ptr, mask, EVEN: tl.constexpr):
    """A load in the input's dtype; EVEN: every element exists (no mask, so the load can be vectorised)."""
    if EVEN:
        return tl.load(ptr)
    else:
        return tl.load(ptr, mask=mask, other=0.0)


@triton.jit
def _dt_of(raw, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SP_POLY: tl.constexpr = False):
    dt = raw.to(tl.float32)
    if HAS_BIAS:
        dt += bias
    if SOFTPLUS:
        if SP_POLY:
            dt = _softplus_poly(dt)
        else:
            dt = _softplus(dt)
    return dt


@triton.jit
def _modes(X, NPT: tl.constexpr, TN: tl.constexpr, BLOCK_L: tl.constexpr):
    """(BLOCK_N, BLOCK_L) -> (NPT, TN, 1, BLOCK_L), mode n = j NPT + i at [i, j]."""
    X = tl.permute(tl.reshape(X, (TN, NPT, BLOCK_L)), (1, 0, 2))
    return X[:, :, None, :]


@triton.jit
def _selective_scan_fwd(
    u_ptr, delta_ptr, A2_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr, ck_ptr, hend_ptr, sdt_ptr,
    L, Dg, N, SEG_LEN,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_CK: tl.constexpr, VARIANT: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    EVEN: tl.constexpr = False, PREFETCH: tl.constexpr = 0, TN: tl.constexpr = 1,
    SHARE: tl.constexpr = 0, SP_POLY: tl.constexpr = False, EXP_POLY: tl.constexpr = 0,
    SEGS: tl.constexpr = 1, PASS: tl.constexpr = 0,
):
    pid_d, g, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    seg = 0
    if SEGS > 1:  # "nsplit" only: program_id(0) = segment * (channel blocks) + channel block
        seg = pid_d // tl.cdiv(Dg, BLOCK_D)
        pid_d = pid_d % tl.cdiv(Dg, BLOCK_D)
    b64 = b.to(tl.int64)
    Dtot = Dg * tl.num_programs(1)
    dg = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,) channel within the group
    d_ok = dg < Dg
    d = (g * Dg + dg).to(tl.int64)  # channel
    n = tl.arange(0, BLOCK_N)
    n_ok = n < N
    cols = tl.arange(0, BLOCK_L)
    B_ptr += b64 * s_Bb + g * s_Bg
    C_ptr += b64 * s_Cb + g * s_Cg
    # the state's (n, d) offsets in last_state (batch, D, N); ck is (batch, D, n_blocks, N)
    state_nd = (b64 * Dtot + d[None, :]) * N + n[:, None]  # (BLOCK_N, BLOCK_D)
    ck_nd = (b64 * Dtot + d[None, :]) * tl.cdiv(L, BLOCK_L) * N + n[:, None]
    nd_ok = n_ok[:, None] & d_ok[None, :]
    carry = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)  # h at the end of the previous block, transposed
    if VARIANT == 1:  # "rows"
        # Tiles (BLOCK_N, BLOCK_D, BLOCK_L). Triton lays a load out along its contiguous axis (t) and then
        # along the axis before it (d): with BLOCK_L one vector wide, each thread owns whole (N, BLOCK_L)
        # slabs of its channels, so the scan over t, the sum over n and the carry never leave the thread.
        # A longer BLOCK_L spreads t over a few threads (the scan then crosses threads).
        d3 = d[None, :, None]
        t0 = cols[None, None, :]  # (1, 1, BLOCK_L)
        dm3 = d_ok[None, :, None]
        n3 = n[:, None, None]
        nm3 = n_ok[:, None, None]
        A2 = tl.load(A2_ptr + d3 * N + n3, mask=dm3 & nm3, other=0.0)  # (BLOCK_N, BLOCK_D, 1)
        bias = 0.0
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d3, mask=dm3, other=0.0).to(tl.float32)  # (1, BLOCK_D, 1)
        if HAS_D:
            Dv = tl.load(D_ptr + d3, mask=dm3, other=0.0).to(tl.float32)
        # base pointers; the tiles' offsets are formed in the loop (hoisted pointer tiles cost registers)
        pu = u_ptr + b64 * s_ub
        pdt = delta_ptr + b64 * s_db
        pz = z_ptr + b64 * s_zb
        if PREFETCH >= 1:  # block 0's inputs; the loop loads block k + 1's while it computes block k
            m0 = dm3 & (t0 < L)
            u_nx = _ld(pu + d3 * s_ud + t0 * s_ul, m0, EVEN)
            dt_nx = _ld(pdt + d3 * s_dd + t0 * s_dl, m0, EVEN)
            if HAS_Z:
                z_nx = _ld(pz + d3 * s_zd + t0 * s_zl, m0, EVEN)
            if PREFETCH >= 2:
                B_nx = _ld(B_ptr + n3 * s_Bn + t0 * s_Bl, nm3 & (t0 < L), EVEN)
                C_nx = _ld(C_ptr + n3 * s_Cn + t0 * s_Cl, nm3 & (t0 < L), EVEN)
        for start in range(0, L, BLOCK_L):
            if SAVE_CK:  # h_{start-1}, for the backward pass
                tl.store(ck_ptr + ck_nd + (start // BLOCK_L) * N, carry, mask=nd_ok)
            t3 = start + t0
            m3 = dm3 & (t3 < L)  # (1, BLOCK_D, BLOCK_L)
            mn3 = nm3 & (t3 < L)  # (BLOCK_N, 1, BLOCK_L)
            if PREFETCH >= 1:
                u_raw, dt_raw = u_nx, dt_nx
                if HAS_Z:
                    z_raw = z_nx
                if PREFETCH >= 2:
                    B_raw, C_raw = B_nx, C_nx
                # the next block (EVEN: the last block reloads itself rather than read past L)
                if EVEN:
                    nxt = tl.minimum(start + BLOCK_L, L - BLOCK_L)
                else:
                    nxt = start + BLOCK_L
                mx = dm3 & (nxt + t0 < L)
                u_nx = _ld(pu + d3 * s_ud + (nxt + t0) * s_ul, mx, EVEN)
                dt_nx = _ld(pdt + d3 * s_dd + (nxt + t0) * s_dl, mx, EVEN)
                if HAS_Z:
                    z_nx = _ld(pz + d3 * s_zd + (nxt + t0) * s_zl, mx, EVEN)
                if PREFETCH >= 2:
                    B_nx = _ld(B_ptr + n3 * s_Bn + (nxt + t0) * s_Bl, nm3 & (nxt + t0 < L), EVEN)
                    C_nx = _ld(C_ptr + n3 * s_Cn + (nxt + t0) * s_Cl, nm3 & (nxt + t0 < L), EVEN)
            else:
                u_raw = _ld(pu + d3 * s_ud + (start + t0) * s_ul, m3, EVEN)
                dt_raw = _ld(pdt + d3 * s_dd + (start + t0) * s_dl, m3, EVEN)
                if HAS_Z:
                    z_raw = _ld(pz + d3 * s_zd + (start + t0) * s_zl, m3, EVEN)
            u = u_raw.to(tl.float32)
            dt = _dt_of(dt_raw, bias, HAS_BIAS, SOFTPLUS, SP_POLY)
            if not EVEN:
                dt = tl.where(m3, dt, 0.0)  # identity steps past L
            if PREFETCH < 2:
                B_raw = _ld(B_ptr + n3 * s_Bn + (start + t0) * s_Bl, mn3, EVEN)
                C_raw = _ld(C_ptr + n3 * s_Cn + (start + t0) * s_Cl, mn3, EVEN)
            a = tl.exp2(dt * A2)  # (BLOCK_N, BLOCK_D, BLOCK_L)
            bx = (dt * u) * B_raw.to(tl.float32)
            bx = tl.where(t0 == 0, a * carry[:, :, None] + bx, bx)  # the carry enters through the first step
            _, h = tl.associative_scan((a, bx), 2, _combine)
            y = tl.sum(h * C_raw.to(tl.float32), axis=0, keep_dims=True)  # (1, BLOCK_D, BLOCK_L)
            carry = tl.sum(tl.where(t0 == BLOCK_L - 1, h, 0.0), axis=2)  # (BLOCK_N, BLOCK_D)
            if HAS_D:
                y += Dv * u
            if HAS_Z:
                z = z_raw.to(tl.float32)
                y *= z * tl.sigmoid(z)
            if EVEN:
                tl.store(y_ptr + (b64 * Dtot + d3) * L + t3, y.to(y_ptr.dtype.element_ty))
            else:
                tl.store(y_ptr + (b64 * Dtot + d3) * L + t3, y.to(y_ptr.dtype.element_ty), mask=m3)
    elif VARIANT == 2:  # "nsplit"
        # Tiles (BLOCK_N // TN, TN, BLOCK_D, BLOCK_L): mode n = j * NPT + i sits at [i, j]. The inputs of a
        # step, (1, TN, BLOCK_D, BLOCK_L), are loaded through pointers that do not move along j, which gives
        # that axis TN threads (each of them loads and computes Δ, u for its channel: TN-fold redundant);
        # each thread scans NPT = N / TN modes over t in registers; y sums over i in the thread and over j
        # across the TN threads (shuffles).
        NPT: tl.constexpr = BLOCK_N // TN
        i4 = tl.arange(0, NPT)[:, None, None, None]
        j4 = tl.arange(0, TN)[None, :, None, None]
        n4 = j4 * NPT + i4  # (NPT, TN, 1, 1)
        nm4 = n4 < N
        d4 = d[None, None, :, None]
        dm4 = d_ok[None, None, :, None]
        t0 = cols[None, None, None, :]  # (1, 1, 1, BLOCK_L)
        j0 = j4 * 0  # (1, TN, 1, 1): gives the step's inputs their TN axis
        A2 = tl.load(A2_ptr + d4 * N + n4, mask=dm4 & nm4, other=0.0)  # (NPT, TN, BLOCK_D, 1)
        if SHARE:
            # the per-(d, t) work once: u, Δ, z in (BLOCK_D, BLOCK_L) tiles (one thread per element; softplus,
            # Δ u, the gate and the store there), Δ and Δ u broadcast to the TN threads of their channel
            # (a layout conversion), y brought back after the sum over modes
            dj4 = d[:, None]  # (BLOCK_D, 1)
            dmj4 = d_ok[:, None]
            tS = cols[None, :]  # (1, BLOCK_L)
        else:
            dj4 = d4 + j0  # (1, TN, BLOCK_D, 1)
            dmj4 = dm4 & (j0 == 0)  # (1, TN, BLOCK_D, 1): d_ok along every j
            tS = t0
        bias = 0.0
        if HAS_BIAS:
            bias = tl.load(bias_ptr + dj4, mask=dmj4, other=0.0).to(tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + dj4, mask=dmj4, other=0.0).to(tl.float32)
        pu = u_ptr + b64 * s_ub + dj4 * s_ud + tS * s_ul  # (1, TN, BLOCK_D, BLOCK_L) or SHARE (BLOCK_D, BLOCK_L)
        pdt = delta_ptr + b64 * s_db + dj4 * s_dd + tS * s_dl
        pz = z_ptr + b64 * s_zb + dj4 * s_zd + tS * s_zl
        # B and C are loaded (BLOCK_N, BLOCK_L), in a layout of their own, and reshaped to (NPT, TN, 1, BLOCK_L)
        # (a 4-D load would impose its layout on the whole block)
        n2 = n[:, None]
        t2 = cols[None, :]
        pB = B_ptr + n2 * s_Bn + t2 * s_Bl  # (BLOCK_N, BLOCK_L)
        pC = C_ptr + n2 * s_Cn + t2 * s_Cl
        nm2 = n_ok[:, None]
        py = y_ptr + (b64 * Dtot + dj4) * L + tS
        first = j4 == 0  # one of the TN threads stores y
        carry4 = tl.zeros([NPT, TN, BLOCK_D], dtype=tl.float32)
        # the checkpoints' offsets: (batch, D, n_blocks, N), mode n = j NPT + i
        nc3 = tl.arange(0, TN)[None, :, None] * NPT + tl.arange(0, NPT)[:, None, None]  # (NPT, TN, 1)
        ck3 = (b64 * Dtot + d[None, None, :]) * tl.cdiv(L, BLOCK_L) * N + nc3
        ck3_ok = (nc3 < N) & d_ok[None, None, :]  # (NPT, TN, BLOCK_D)
        # segments of SEG_LEN steps (SEGS > 1): pass 1 scans each from a zero state and keeps its last state and
        # Σ Δ; pass 0 starts each from the true state, h_in[s] = exp(A Σ Δ[s-1]) h_in[s-1] + h_end[s-1]
        t_lo = seg * SEG_LEN
        t_hi = tl.minimum(t_lo + SEG_LEN, L)
        seg3 = ((b64 * SEGS + seg) * Dtot + d[None, None, :]) * N + nc3  # (batch, SEGS, D, N)
        if SEGS > 1:
            if PASS == 1:
                if SHARE:
                    sdt_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
                else:
                    sdt_acc = tl.zeros([1, TN, BLOCK_D], dtype=tl.float32)
            else:
                A2_3 = tl.sum(A2, axis=3)  # (NPT, TN, BLOCK_D)
                for sp in range(0, seg):
                    at = ((b64 * SEGS + sp) * Dtot + d[None, None, :])
                    sdt = tl.load(sdt_ptr + at, mask=d_ok[None, None, :], other=0.0)  # (1, 1, BLOCK_D)
                    hend = tl.load(hend_ptr + at * N + nc3, mask=ck3_ok, other=0.0)
                    carry4 = tl.exp2(A2_3 * sdt) * carry4 + hend
        if PREFETCH >= 1:
            m0 = dmj4 & (t_lo + tS < t_hi)
            u_nx = _ld(pu + t_lo * s_ul, m0, EVEN)
            dt_nx = _ld(pdt + t_lo * s_dl, m0, EVEN)
            if HAS_Z:
                z_nx = _ld(pz + t_lo * s_zl, m0, EVEN)
            if PREFETCH >= 2:
                B_nx = _ld(pB + t_lo * s_Bl, nm2 & (t_lo + t2 < t_hi), EVEN)
                C_nx = _ld(pC + t_lo * s_Cl, nm2 & (t_lo + t2 < t_hi), EVEN)
        for start in range(t_lo, t_hi, BLOCK_L):
            if SAVE_CK:  # h_{start-1}, for the backward pass
                tl.store(ck_ptr + ck3 + (start // BLOCK_L) * N, carry4, mask=ck3_ok)
            m4 = dmj4 & (start + tS < t_hi)  # (1, TN, BLOCK_D, BLOCK_L) or SHARE (BLOCK_D, BLOCK_L)
            mn2 = nm2 & (start + t2 < t_hi)  # (BLOCK_N, BLOCK_L)
            if PREFETCH >= 1:
                u_raw, dt_raw = u_nx, dt_nx
                if HAS_Z:
                    z_raw = z_nx
                if PREFETCH >= 2:
                    B_raw, C_raw = B_nx, C_nx
                if EVEN:
                    nxt = tl.minimum(start + BLOCK_L, t_hi - BLOCK_L)
                else:
                    nxt = start + BLOCK_L
                mx = dmj4 & (nxt + tS < t_hi)
                u_nx = _ld(pu + nxt * s_ul, mx, EVEN)
                dt_nx = _ld(pdt + nxt * s_dl, mx, EVEN)
                if HAS_Z:
                    z_nx = _ld(pz + nxt * s_zl, mx, EVEN)
                if PREFETCH >= 2:
                    B_nx = _ld(pB + nxt * s_Bl, nm2 & (nxt + t2 < t_hi), EVEN)
                    C_nx = _ld(pC + nxt * s_Cl, nm2 & (nxt + t2 < t_hi), EVEN)
            else:
                u_raw = _ld(pu + start * s_ul, m4, EVEN)
                dt_raw = _ld(pdt + start * s_dl, m4, EVEN)
                if HAS_Z:
                    z_raw = _ld(pz + start * s_zl, m4, EVEN)
            if PREFETCH < 2:
                B_raw = _ld(pB + start * s_Bl, mn2, EVEN)
                C_raw = _ld(pC + start * s_Cl, mn2, EVEN)
            if SHARE >= 2:  # B, C to float32 once per element, in the load's layout (not per thread that reads it)
                B4 = _modes(_pin(B_raw.to(tl.float32)), NPT, TN, BLOCK_L)
                C4 = _modes(_pin(C_raw.to(tl.float32)), NPT, TN, BLOCK_L)
            else:
                B4 = _modes(B_raw.to(tl.float32), NPT, TN, BLOCK_L)
                C4 = _modes(C_raw.to(tl.float32), NPT, TN, BLOCK_L)
            u = u_raw.to(tl.float32)
            dt = _dt_of(dt_raw, bias, HAS_BIAS, SOFTPLUS, SP_POLY)
            if not EVEN:
                dt = tl.where(m4, dt, 0.0)
            if SEGS > 1:
                if PASS == 1:
                    if SHARE:
                        sdt_acc += tl.sum(dt, axis=1)
                    else:
                        sdt_acc += tl.sum(dt, axis=3)
            if SHARE:
                dt4 = _pin(dt)[None, None, :, :]  # (1, 1, BLOCK_D, BLOCK_L): to the TN threads of each channel
                dtu4 = _pin(dt * u)[None, None, :, :]
                a = _exp2_modes(dt4 * A2, EXP_POLY, NPT, TN, BLOCK_D, BLOCK_L)  # (NPT, TN, BLOCK_D, BLOCK_L)
                bx = dtu4 * B4
            else:
                a = _exp2_modes(dt * A2, EXP_POLY, NPT, TN, BLOCK_D, BLOCK_L)
                bx = (dt * u) * B4
            bx = tl.where(t0 == 0, a * carry4[:, :, :, None] + bx, bx)
            _, h = tl.associative_scan((a, bx), 3, _combine)
            if SHARE:  # -0.0: x + (-0.0) == x, so the compiler may drop the sum's other terms (+0.0 it may not)
                carry4 = tl.sum(tl.where(t0 == BLOCK_L - 1, h, -0.0), axis=3)  # (NPT, TN, BLOCK_D)
            else:
                carry4 = tl.sum(tl.where(t0 == BLOCK_L - 1, h, 0.0), axis=3)
            y = tl.sum(h * C4, axis=0, keep_dims=True)  # (1, TN, BLOCK_D, BLOCK_L): in-thread
            y = tl.sum(y, axis=1, keep_dims=True)  # (1, 1, BLOCK_D, BLOCK_L): across the TN threads
            if SHARE:
                y = tl.reshape(y, (BLOCK_D, BLOCK_L))  # back to one thread per (d, t)
            if HAS_D:
                y += Dv * u
            if HAS_Z:
                z = z_raw.to(tl.float32)
                y *= z * tl.sigmoid(z)
            if PASS == 0:
                if SHARE:
                    if EVEN:
                        tl.store(py + start, y.to(y_ptr.dtype.element_ty))
                    else:
                        tl.store(py + start, y.to(y_ptr.dtype.element_ty), mask=m4)
                else:
                    tl.store(py + start, y.to(y_ptr.dtype.element_ty), mask=(m4 & first) if not EVEN else first)
        if PASS == 1:  # the segment's last state from a zero start, and its Σ Δ per channel
            tl.store(hend_ptr + seg3, carry4, mask=ck3_ok)
            if SHARE:
                tl.store(sdt_ptr + (b64 * SEGS + seg) * Dtot + d, sdt_acc, mask=d_ok)
            else:
                j3 = tl.arange(0, TN)[None, :, None]
                tl.store(sdt_ptr + (b64 * SEGS + seg) * Dtot + d[None, None, :] + j3 * 0, sdt_acc,
                         mask=d_ok[None, None, :] & (j3 == 0))
        elif seg == SEGS - 1:  # the carry (NPT, TN, BLOCK_D) -> last_state (batch, D, N)
            n3 = tl.arange(0, TN)[None, :, None] * NPT + tl.arange(0, NPT)[:, None, None]  # (NPT, TN, 1)
            d3 = d[None, None, :]
            tl.store(last_ptr + (b64 * Dtot + d3) * N + n3, carry4, mask=(n3 < N) & d_ok[None, None, :])
    else:
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
        else:
            bias = tl.zeros([BLOCK_D], dtype=tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
        for start in range(0, L, BLOCK_L):
            if SAVE_CK:
                tl.store(ck_ptr + ck_nd + (start // BLOCK_L) * N, carry, mask=nd_ok)
            t = start + cols  # (BLOCK_L,)
            t_ok = t < L
            m = d_ok[:, None] & t_ok[None, :]  # (BLOCK_D, BLOCK_L)
            u = tl.load(u_ptr + b64 * s_ub + d[:, None] * s_ud + t[None, :] * s_ul, mask=m, other=0.0).to(tl.float32)
            dt, _ = _step(delta_ptr, bias, b64 * s_db + d[:, None] * s_dd + t[None, :] * s_dl, m, HAS_BIAS, SOFTPLUS)
            dtu = dt * u  # (BLOCK_D, BLOCK_L)
            y = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
            for i in tl.static_range(BLOCK_N):  # modes i >= N have A = B = 0 and add nothing
                sel = (n == i)[:, None]  # (BLOCK_N, 1): picks mode i of the carry
                i_ok = t_ok & (i < N)
                A2i = tl.load(A2_ptr + d * N + i, mask=d_ok & (i < N), other=0.0)  # (BLOCK_D,)
                Bi = tl.load(B_ptr + i * s_Bn + t * s_Bl, mask=i_ok, other=0.0).to(tl.float32)  # (BLOCK_L,)
                Ci = tl.load(C_ptr + i * s_Cn + t * s_Cl, mask=i_ok, other=0.0).to(tl.float32)
                a = tl.exp2(dt * A2i[:, None])  # (BLOCK_D, BLOCK_L)
                acum, hloc = tl.associative_scan((a, dtu * Bi[None, :]), 1, _combine)
                h = acum * tl.sum(tl.where(sel, carry, 0.0), axis=0)[:, None] + hloc
                y += h * Ci[None, :]
                last = tl.sum(tl.where(cols[None, :] == BLOCK_L - 1, h, 0.0), axis=1)  # (BLOCK_D,)
                carry = tl.where(sel, last[None, :], carry)
            if HAS_D:
                y += Dv[:, None] * u
            if HAS_Z:
                z = tl.load(z_ptr + b64 * s_zb + d[:, None] * s_zd + t[None, :] * s_zl, mask=m, other=0.0).to(tl.float32)
                y *= z * tl.sigmoid(z)
            tl.store(y_ptr + (b64 * Dtot + d[:, None]) * L + t[None, :], y.to(y_ptr.dtype.element_ty), mask=m)
    if VARIANT != 2:
        tl.store(last_ptr + state_nd, carry, mask=nd_ok)


@triton.jit
def _softplus_sigmoid(x):
    """(softplus(x), sigmoid(x)) from one exp2: w = e^-|x|, σ(x) = 1 / (1 + w) for x >= 0, w / (1 + w) below,
    softplus(x) = max(x, 0) + log1p(w) by the log-free series of ``_softplus_poly`` (relative error below
    5e-7 + 1.4e-7 max(-x, 0) compiled: see there)."""
    w = tl.exp(-tl.abs(x))
    q = 1.0 / (1.0 + w)
    f = w / (2.0 + w)
    f2 = f * f
    p = f2 * 0.07692307692307693 + 0.09090909090909091  # 1/13, 1/11
    p = p * f2 + 0.1111111111111111
    p = p * f2 + 0.14285714285714285
    p = p * f2 + 0.2
    p = p * f2 + 0.3333333333333333
    p = p * f2 + 1.0
    return tl.maximum(x, 0.0) + 2.0 * f * p, tl.where(x >= 0.0, q, w * q)


@triton.jit
def _column(x, sel):
    """x[:, :, :, s] of a 4-D x for the one s where sel (1, 1, 1, BLOCK_L) holds: a sum with -0.0 elsewhere
    (x + -0.0 == x), so that where the last axis lies in the thread's registers only the picked one is kept."""
    return tl.sum(tl.where(sel, x, -0.0), axis=3)


@triton.jit
def _modes_bwd(X, NPT: tl.constexpr, TN: tl.constexpr, BLOCK_L: tl.constexpr):
    """(BLOCK_N, BLOCK_L) -> (NPT, 1, TN, BLOCK_L), mode n = j NPT + i at [i, :, j]."""
    X = tl.permute(tl.reshape(X, (TN, NPT, BLOCK_L)), (1, 0, 2))
    return X[:, None, :, :]


@triton.jit
def _to_modes(x, SHARE: tl.constexpr):
    """A per-(d, t) tile to the mode tiles' rank: SHARE (BLOCK_D, BLOCK_L) -> (1, BLOCK_D, 1, BLOCK_L), left in
    its layout until here (``_pin``); else it already is (1, BLOCK_D, TN, BLOCK_L)."""
    if SHARE:
        return _pin(x)[None, :, None, :]
    else:
        return x


@triton.jit
def _mode_sum(x, SHARE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """Σ_n of a mode tile (NPT, BLOCK_D, TN, BLOCK_L): in the thread, then across the TN threads of a channel;
    back to the per-(d, t) tiles' shape."""
    s = tl.sum(tl.sum(x, axis=0, keep_dims=True), axis=2, keep_dims=True)  # (1, BLOCK_D, 1, BLOCK_L)
    if SHARE:
        s = tl.reshape(s, (BLOCK_D, BLOCK_L))
    return s


@triton.jit
def _selective_scan_bwd(
    u_ptr, delta_ptr, A2_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, gy_ptr, glast_ptr, ck_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    L, Dg, N,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_GLAST: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, TN: tl.constexpr,
    SHARE: tl.constexpr = 1,
):
    # Mode tiles (NPT, BLOCK_D, TN, BLOCK_L): mode n = j NPT + i at [i, :, j], TN threads per channel along N
    # (the axis before the steps, so that a warp's lanes go to it first and the warps to the channels), NPT
    # modes and BLOCK_L steps in each thread's registers. B and C are loaded (BLOCK_N, BLOCK_L) and reshaped.
    # The per-(d, t) work (loads, softplus, gate, the three outputs) is done on (BLOCK_D, BLOCK_L) tiles, once
    # per (d, t) (SHARE 1), or on (1, BLOCK_D, TN, BLOCK_L) tiles by each of the TN threads (SHARE 0). Blocks
    # of BLOCK_L steps (the forward's checkpoint spacing) go from the last to the first.
    pid_d, g, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    G = tl.num_programs(1)
    Dtot = Dg * G
    NPT: tl.constexpr = BLOCK_N // TN
    b64 = b.to(tl.int64)
    i4 = tl.arange(0, NPT)[:, None, None, None]
    j4 = tl.arange(0, TN)[None, None, :, None]
    n4 = j4 * NPT + i4  # (NPT, 1, TN, 1)
    dg = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = dg < Dg
    d = (g * Dg + dg).to(tl.int64)
    d4 = d[None, :, None, None]
    dm4 = d_ok[None, :, None, None]
    t4 = tl.arange(0, BLOCK_L)[None, None, None, :]
    if SHARE:  # the per-(d, t) tiles
        dS = d[:, None]  # (BLOCK_D, 1)
        dmS = d_ok[:, None]
        tS = tl.arange(0, BLOCK_L)[None, :]
        lead = dmS  # every thread of a (d, t) tile stores
    else:
        dS = d4 + j4 * 0  # (1, BLOCK_D, TN, 1): the channel, along every j
        dmS = dm4 & (j4 >= 0)
        tS = t4
        lead = dmS & (j4 == 0)  # one of the TN threads of a channel stores
    n_blocks = tl.cdiv(L, BLOCK_L)
    A2 = tl.load(A2_ptr + d4 * N + n4, mask=dm4 & (n4 < N), other=0.0)  # (NPT, BLOCK_D, TN, 1)
    A = A2 * 0.6931471805599453  # A = A2 ln 2
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + dS, mask=dmS, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + dS, mask=dmS, other=0.0).to(tl.float32)
    B_ptr += b64 * s_Bb + g * s_Bg
    C_ptr += b64 * s_Cb + g * s_Cg
    n2 = tl.arange(0, BLOCK_N)[:, None]
    t2 = tl.arange(0, BLOCK_L)[None, :]
    pB = B_ptr + n2 * s_Bn + t2 * s_Bl  # (BLOCK_N, BLOCK_L)
    pC = C_ptr + n2 * s_Cn + t2 * s_Cl
    # (NPT, BLOCK_D, TN): a state's offsets in the checkpoints (batch, D, n_blocks, N) and in (batch, D, N)
    j3 = tl.arange(0, TN)[None, None, :]
    n3 = j3 * NPT + tl.arange(0, NPT)[:, None, None]  # (NPT, 1, TN)
    d3 = d[None, :, None]  # (1, BLOCK_D, 1)
    m3 = (n3 < N) & d_ok[None, :, None]
    ck3 = (b64 * Dtot + d3) * n_blocks * N + n3
    st3 = (b64 * Dtot + d3) * N + n3
    if HAS_GLAST:  # dLoss/dh_{L-1} enters the adjoint at the last step
        r = tl.load(glast_ptr + st3, mask=m3, other=0.0).to(tl.float32)
    else:
        r = tl.zeros([NPT, BLOCK_D, TN], dtype=tl.float32)  # a_t g_t at the first step of the block after this one
    dA_acc = tl.zeros([NPT, BLOCK_D, TN], dtype=tl.float32)
    if SHARE:  # per channel: sums over t of gy x and of dLoss/dΔ (before the bias)
        dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        TAX: tl.constexpr = 1  # the time axis of the per-(d, t) tiles
    else:
        dD_acc = tl.zeros([1, BLOCK_D, TN], dtype=tl.float32)
        TAX: tl.constexpr = 3
    dbias_acc = dD_acc
    pu = u_ptr + b64 * s_ub + dS * s_ud + tS * s_ul
    pdt = delta_ptr + b64 * s_db + dS * s_dd + tS * s_dl
    pz = z_ptr + b64 * s_zb + dS * s_zd + tS * s_zl
    out = (b64 * Dtot + dS) * L + tS  # gy, du, ddelta, dz: contiguous (batch, D, L)
    # partial sums over each program's channels: dB, dC (batch, G, n_dblocks, N, L), summed by the launcher
    part = ((b64 * G + g) * tl.num_programs(0) + pid_d) * N
    for kk in range(0, n_blocks):
        k = n_blocks - 1 - kk
        start = k * BLOCK_L
        # per (d, t): the step, the gradient reaching y before the gate
        m = dmS & (start + tS < L)
        u = tl.load(pu + start * s_ul, mask=m, other=0.0).to(tl.float32)
        raw = tl.load(pdt + start * s_dl, mask=m, other=0.0).to(tl.float32) + bias
        if SOFTPLUS:
            dt, dsp = _softplus_sigmoid(raw)  # Δ and softplus' derivative
        else:
            dt = raw
        dt = tl.where(m, dt, 0.0)  # identity steps past L
        gout = tl.load(gy_ptr + out + start, mask=m, other=0.0).to(tl.float32)
        if HAS_Z:
            z = tl.load(pz + start * s_zl, mask=m, other=0.0).to(tl.float32)
            sz = tl.sigmoid(z)
            gy = gout * z * sz
        else:
            gy = gout
        dt4 = _to_modes(dt, SHARE)
        dtu4 = _to_modes(dt * u, SHARE)
        gy4 = _to_modes(gy, SHARE)
        # per (d, n, t): the block's states again, from its checkpoint, as in the forward pass
        mn2 = (n2 < N) & (start + t2 < L)
        B4 = _modes_bwd(tl.load(pB + start * s_Bl, mask=mn2, other=0.0).to(tl.float32), NPT, TN, BLOCK_L)
        C4 = _modes_bwd(tl.load(pC + start * s_Cl, mask=mn2, other=0.0).to(tl.float32), NPT, TN, BLOCK_L)
        h0 = tl.load(ck_ptr + ck3 + k * N, mask=m3, other=0.0)
        a = tl.exp2(dt4 * A2)  # (NPT, BLOCK_D, TN, BLOCK_L)
        bx = dtu4 * B4
        _, h = tl.associative_scan((a, tl.where(t4 == 0, a * h0[:, :, :, None] + bx, bx)), 3, _combine)
        # the adjoint g_t = C_t gy_t + a_{t+1} g_{t+1}, step by step from the last: r, what enters from the next
        # block (a g at its first step), is added to the last step; a column of a thread's registers is picked
        # and placed for free (Triton's reverse scan would shuffle across the warp even here)
        c = C4 * gy4
        gh = c
        for s in tl.static_range(BLOCK_L - 1, -1, -1):
            g_s = _column(c, t4 == s) + r  # (NPT, BLOCK_D, TN)
            gh = tl.where(t4 == s, g_s[:, :, :, None], gh)
            r = _column(a, t4 == s) * g_s  # a_s g_s, what enters step s - 1
        # sums over the channels: dB_t = Σ_d g_t Δ_t x_t, dC_t = Σ_d gy_t h_t
        t3 = start + tl.arange(0, BLOCK_L)[None, None, :]
        nj3 = tl.arange(0, TN)[None, :, None] * NPT + tl.arange(0, NPT)[:, None, None]  # (NPT, TN, 1)
        nt = (part + nj3) * L + t3  # (NPT, TN, BLOCK_L)
        nt_ok = (nj3 < N) & (t3 < L)
        tl.store(dB_ptr + nt, tl.sum(gh * dtu4, axis=1), mask=nt_ok)
        tl.store(dC_ptr + nt, tl.sum(h * gy4, axis=1), mask=nt_ok)
        dlog = gh * (h - bx)  # dLoss/d(Δ_t A) = g_t a_t h_{t-1}
        dA_acc += tl.sum(dlog * dt4, axis=3)
        # sums over the modes, back per (d, t)
        ddtu = _mode_sum(gh * B4, SHARE, BLOCK_D, BLOCK_L)  # dLoss/d(Δ_t x_t)
        ddt = ddtu * u + _mode_sum(dlog * A, SHARE, BLOCK_D, BLOCK_L)
        du = ddtu * dt
        if HAS_D:
            du += gy * Dv
            dD_acc += tl.sum(gy * u, axis=TAX)
        if HAS_Z:
            ypre = _mode_sum(h * C4, SHARE, BLOCK_D, BLOCK_L)
            if HAS_D:
                ypre += Dv * u
            dz = gout * ypre * sz * (1.0 + z * (1.0 - sz))  # silu'(z) = σ(z)(1 + z(1 - σ(z)))
            tl.store(dz_ptr + out + start, dz.to(dz_ptr.dtype.element_ty), mask=m & lead)
        if SOFTPLUS:
            ddt *= dsp
        ddt = tl.where(m, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=TAX)
        tl.store(du_ptr + out + start, du.to(du_ptr.dtype.element_ty), mask=m & lead)
        tl.store(ddelta_ptr + out + start, ddt.to(ddelta_ptr.dtype.element_ty), mask=m & lead)
    tl.store(dA_ptr + st3, dA_acc, mask=m3)  # per batch element; the launcher sums
    if SHARE:
        tl.store(dD_ptr + b64 * Dtot + d, dD_acc, mask=d_ok)
        tl.store(dbias_ptr + b64 * Dtot + d, dbias_acc, mask=d_ok)
    else:
        pv = b64 * Dtot + d[None, :, None] + j3 * 0  # (1, BLOCK_D, TN)
        vm = d_ok[None, :, None] & (j3 == 0)
        tl.store(dD_ptr + pv, dD_acc, mask=vm)
        tl.store(dbias_ptr + pv, dbias_acc, mask=vm)


@triton.jit
def _fast_math_kernel(x_ptr, e_ptr, s_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(e_ptr + offs, _exp2_poly(x), mask=offs < n)
    tl.store(s_ptr + offs, _softplus_poly(x), mask=offs < n)


def fast_math(x):
    """(_exp2_poly(x), _softplus_poly(x)) for a float32 tensor x: the kernel's polynomial forms, for their tests."""
    x = x.float().contiguous()
    e, s = torch.empty_like(x), torch.empty_like(x)
    _fast_math_kernel[(triton.cdiv(x.numel(), 1024),)](x, e, s, x.numel(), BLOCK=1024)
    return e, s


# ----------------------------------------------------------------------------- launchers


VARIANTS = {"nloop": 0, "rows": 1, "nsplit": 2}


def _default_variant(Dg, N, L, training, tn):
    """The variant used when none is asked for -> (variant, tn).

    "nsplit" with 2 threads per channel (16 channels and 8 steps per one-warp program, the next block
    prefetched) where it was measured fastest and checked on an H100: N = 16, no masks (16 | D per group,
    8 | L), forward only. 408 us against "rows"' 611 us at B8 D2048 L2048 N16 bf16 (torch 2.11, Triton
    3.6; the whole sweep is in this module's docstring). Above 32 modes "nsplit" with 4 modes per thread.
    Everywhere else "rows", the form the H100 test suite ran on odd sizes.
    """
    if training:  # checkpoints every 8 steps for the backward pass; at most 8 modes per thread
        return "nsplit", tn or max(2, next_pow2(N) // 8)
    if not interpreting() and next_pow2(N) > 32:
        # "rows" would fall back to "nloop", whose loop over the modes is unrolled: at N = 64 (sm_90, Triton
        # 3.7) it took 72 s of one core to compile and spilled 736 bytes; "nsplit" with 4 modes per thread
        # compiles in about 1 s without spilling (benchmarks/compile_selective.py's offline compile)
        return "nsplit", tn or min(32, next_pow2(N) // 4)  # at most a warp's threads per channel
    if interpreting() or N != 16:
        return DEFAULT_VARIANT, tn
    _, meta, _ = _blocks(Dg, N, L, False, "nsplit", None, None, DEFAULT_NSPLIT["num_warps"],
                         tn=tn or DEFAULT_NSPLIT["tn"])
    return ("nsplit", meta["TN"]) if meta["EVEN"] else (DEFAULT_VARIANT, tn)  # the measured blocks: 16 x 8


def _blocks(Dg, N, L, training, variant, block_d, block_l, num_warps, itemsize=2, prefetch=None, tn=None, even=None,
            share=False, softplus_poly=False, exp_poly=0):
    """The forward pass's variant and meta-parameters (the backward pass reuses BLOCK_L: the checkpoint spacing).

    Returns (variant, meta, launch options). ``prefetch``: 0 none, 1 the next block's u, Δ, z, 2 also its B, C
    ("rows", "nsplit"); ``tn``: threads along N ("nsplit"); ``even``: None decides (no masks when the blocks
    tile D and L exactly and BLOCK_N = N). "nsplit" only: ``share`` 1: the per-(d, t) work done once per
    (d, t) and broadcast to the TN threads, 2: also B, C converted to float32 once per element; ``softplus_poly``
    the log-free softplus (_softplus_poly; also "rows");
    ``exp_poly`` 0, 1, 2 or 4: none, all, every 2nd or every 4th mode's exp2 by an FMA polynomial (_exp2_poly).
    """
    if exp_poly not in (0, 1, 2, 4):
        raise ValueError(f"exp_poly must be 0, 1, 2 or 4; got {exp_poly!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}; got {variant!r}")
    BN = next_pow2(N)
    tn = min(tn or 2, BN)  # "nsplit" only
    if interpreting():  # small: the interpreter's scan is a Python loop per element
        meta = dict(BLOCK_D=block_d or min(next_pow2(Dg), 4), BLOCK_N=BN, BLOCK_L=block_l or min(next_pow2(L), 8))
        extra = {}
    elif variant == "nloop":
        if training:  # the checkpoint spacing is the backward kernel's BLOCK_L: registers (NPT, BLOCK_L) per thread
            block_l = block_l or 16
        meta = dict(BLOCK_D=block_d or min(next_pow2(Dg), 32), BLOCK_N=BN, BLOCK_L=block_l or min(next_pow2(L), 64))
        extra = dict(num_warps=num_warps or 4)
    elif variant == "rows":
        if block_l is None and BN > 32:  # a thread's slab (N, BLOCK_L) would not fit in registers
            return _blocks(Dg, N, L, training, "nloop", block_d, block_l, num_warps, itemsize)
        # Measured on an H100 (N = 16, bfloat16): 4 steps x 16 modes per thread, 128 channels per program
        # use 194 registers without spilling; 8 steps spill and run 7x slower.
        w = num_warps or 1  # one warp: no cross-warp sums or barriers (3.0x the four-warp form, H100)
        bl = block_l or max(1, min(16 // itemsize, 64 // BN))
        meta = dict(BLOCK_D=block_d or 32 * w, BLOCK_N=BN, BLOCK_L=bl)
        extra = dict(num_warps=w)
    else:  # "nsplit": one warp per program, TN threads per channel along N
        w = num_warps or 1
        meta = dict(BLOCK_D=block_d or max(1, 32 // tn) * w, BLOCK_N=BN, BLOCK_L=block_l or 8)
        extra = dict(num_warps=w)
    if variant in ("rows", "nsplit"):
        fits = L % meta["BLOCK_L"] == 0 and Dg % meta["BLOCK_D"] == 0 and BN == N
        if even is None:
            even = fits
        elif even and not fits:  # the mask-free kernel would read and write past L and D
            raise ValueError(f"even=True needs L % BLOCK_L == 0, (D / G) % BLOCK_D == 0 and N a power of 2; got "
                             f"L={L}, BLOCK_L={meta['BLOCK_L']}, D/G={Dg}, BLOCK_D={meta['BLOCK_D']}, N={N}")
        meta.update(EVEN=bool(even), PREFETCH=int(prefetch or 0))
        if variant == "nsplit":
            meta.update(TN=tn, PREFETCH=int(1 if prefetch is None else prefetch))
            if exp_poly > 1 and (BN // meta["TN"]) % exp_poly:
                raise ValueError(f"exp_poly={exp_poly} needs a multiple of {exp_poly} modes per thread; "
                                 f"got BLOCK_N / TN = {BN // meta['TN']}")
            if share or exp_poly:
                meta.update(SHARE=int(share), EXP_POLY=int(exp_poly))
        if softplus_poly:
            meta.update(SP_POLY=True)
    return variant, meta, extra


def _prepare(u, delta, A, B, C, D, z, delta_bias):
    """Group views, float32 A log2 e, strides. B, C (b, N, L) become (b, 1, N, L) views."""
    Bv = B if B.dim() == 4 else B.unsqueeze(1)
    Cv = C if C.dim() == 4 else C.unsqueeze(1)
    G = max(Bv.shape[1], Cv.shape[1])  # a 3-D B or C serves every group (its group stride is 0)
    if Bv.shape[1] != G:
        Bv = Bv.expand(-1, G, -1, -1)
    if Cv.shape[1] != G:
        Cv = Cv.expand(-1, G, -1, -1)
    A2 = (A.float() * LOG2E).contiguous()  # exp(Δ A) = exp2(Δ A log2 e): one exp2 per element
    D = D.contiguous() if D is not None else A2  # per-channel vectors are read with stride 1
    delta_bias = delta_bias.contiguous() if delta_bias is not None else A2
    zs = z.stride() if z is not None else (0, 0, 0)
    strides = (*u.stride(), *delta.stride(), *zs, *Bv.stride(), *Cv.stride())
    return Bv, Cv, G, A2, D, delta_bias, strides


def _interpreter_float32(*xs):
    return tuple(x.float() if (x is not None and x.dtype != torch.float32) else x for x in xs)


def selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       save_checkpoints=False, variant=None, block_d=None, block_l=None, num_warps=None,
                       prefetch=None, tn=None, even=None, share=None, softplus_poly=None, exp_poly=0,
                       segments=None):
    """Launch the forward kernel -> (y, last_state, checkpoints, meta).

    y (b, D, L) in u's dtype; last_state (b, D, N) float32; checkpoints
    (b, D, n_blocks, N) float32, the states at each block's start (with
    ``save_checkpoints``, else None); meta, the block sizes (the backward pass
    must use the same BLOCK_L).
    The keyword arguments after ``save_checkpoints`` pick the variant and its
    meta-parameters (benchmarks; see ``_blocks``).
    """
    out_dtype = u.dtype
    if interpreting():
        u, delta, A, B, C, D, z, delta_bias = _interpreter_float32(u, delta, A, B, C, D, z, delta_bias)
    batch, Dtot, L = u.shape
    N = A.shape[1]
    has_d, has_bias = D is not None, delta_bias is not None
    Bv, Cv, G, A2, D, delta_bias, strides = _prepare(u, delta, A, B, C, D, z, delta_bias)
    Dg = Dtot // G
    if variant is None:
        variant, tn = _default_variant(Dg, N, L, save_checkpoints, tn)
        if variant == "nsplit" and tn == DEFAULT_NSPLIT["tn"]:  # training's forward too
            share = DEFAULT_NSPLIT["share"] if share is None else share
            softplus_poly = DEFAULT_NSPLIT["softplus_poly"] if softplus_poly is None else softplus_poly
            num_warps = DEFAULT_NSPLIT["num_warps"] if num_warps is None else num_warps
    share, softplus_poly = share or 0, bool(softplus_poly)
    variant, meta, extra = _blocks(Dg, N, L, save_checkpoints, variant, block_d, block_l, num_warps, u.element_size(),
                                   prefetch, tn, even, share, softplus_poly, exp_poly)
    y = torch.empty(batch, Dtot, L, device=u.device, dtype=u.dtype)
    last = torch.empty(batch, Dtot, N, device=u.device, dtype=torch.float32)
    n_blocks = triton.cdiv(L, meta["BLOCK_L"])
    ck = torch.empty(batch, Dtot, n_blocks, N, device=u.device, dtype=torch.float32) if save_checkpoints else last
    n_dblocks = triton.cdiv(Dg, meta["BLOCK_D"])
    segs = _segments(segments, variant, batch * G * n_dblocks * extra.get("num_warps", 1), L, meta["BLOCK_L"])
    seg_len = triton.cdiv(triton.cdiv(L, segs), meta["BLOCK_L"]) * meta["BLOCK_L"]
    segs = triton.cdiv(L, seg_len)
    grid = (n_dblocks * segs, G, batch)
    dummy = A2
    hend = sdt = dummy
    if segs > 1:  # pass 1: each segment's last state from a zero start and its Σ Δ
        hend = torch.empty(batch, segs, Dtot, N, device=u.device, dtype=torch.float32)
        sdt = torch.empty(batch, segs, Dtot, device=u.device, dtype=torch.float32)
        meta = dict(meta, SEGS=segs)
    for pass_ in ((1, 0) if segs > 1 else (0,)):
        _selective_scan_fwd[grid](
            u, delta, A2, Bv, Cv, D, dummy if z is None else z, delta_bias, y, last, ck, hend, sdt, L, Dg, N,
            seg_len, *strides, HAS_D=has_d, HAS_Z=z is not None, HAS_BIAS=has_bias, SOFTPLUS=bool(delta_softplus),
            SAVE_CK=save_checkpoints and pass_ == 0, VARIANT=VARIANTS[variant], **meta, **extra,
            **(dict(PASS=pass_) if pass_ else {}))
    return y.to(out_dtype), last, (ck if save_checkpoints else None), meta


@functools.lru_cache(maxsize=None)
def _sm_count(device_index):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _segments(segments, variant, warps, L, block_l):
    """How many segments of the sequence the forward pass runs side by side ("nsplit" only; two passes).

    ``segments``: an int (1: none), or None: automatic on a GPU when the grid has fewer than 4 warps per SM
    (batch 1, few channels, a long sequence), enough segments for about 8 warps per SM, each at least 512 steps.
    """
    if variant != "nsplit":
        if segments not in (None, 1):
            raise ValueError(f"segments apply to the 'nsplit' variant only; got segments={segments} with {variant!r}")
        return 1
    if segments is not None:
        return max(1, int(segments))
    if interpreting():
        return 1
    sms = _sm_count(torch.cuda.current_device())
    if warps >= 4 * sms:
        return 1
    return max(1, min(next_pow2(-(-8 * sms // warps)), L // 512))


def _bwd_blocks(Dg, N, block_l, tn=None, num_warps=None, block_d=None, share=None):
    """The backward pass's meta-parameters -> (meta, launch options). BLOCK_L is the forward's (its checkpoint
    spacing); ``tn`` threads per channel along N (default: 4 modes per thread), ``num_warps`` warps per program
    along D (BLOCK_D = 32 num_warps / tn channels), ``share`` 1 (default): the per-(d, t) work once per (d, t),
    0: by each of the TN threads of a channel."""
    BN = next_pow2(N)
    tn = min(tn or max(1, min(BN // 4, 32)), BN)
    share = 1 if share is None else int(share)
    if interpreting():
        bd = block_d or min(next_pow2(Dg), 4)
        meta = dict(BLOCK_D=bd, BLOCK_N=BN, BLOCK_L=block_l, TN=tn, SHARE=share)
        extra = {}
    else:
        w = num_warps or 1  # one warp: no cross-warp sums or barriers (3.0x the four-warp form, H100)
        meta = dict(BLOCK_D=block_d or max(1, 32 // tn) * w, BLOCK_N=BN, BLOCK_L=block_l, TN=tn, SHARE=share)
        extra = dict(num_warps=w)
    return meta, extra


def selective_scan_bwd(gy, glast, ck, meta, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, tn=None, num_warps=None, block_d=None, share=None):
    """Launch the backward kernel -> gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias).

    gy (b, D, L) is dLoss/dy, glast (b, D, N) or None is dLoss/d last_state;
    ck and meta come from ``selective_scan_fwd(save_checkpoints=True)``. du, ddelta and dz come in the dtypes of
    u, delta and z, the others in float32. ``tn``, ``num_warps``, ``block_d``: see ``_bwd_blocks``.
    """
    dtypes = (u.dtype, delta.dtype, None if z is None else z.dtype)
    if interpreting():
        u, delta, A, B, C, D, z, delta_bias, gy = _interpreter_float32(u, delta, A, B, C, D, z, delta_bias, gy)
        dtypes = (torch.float32,) * 3
    batch, Dtot, L = u.shape
    N = A.shape[1]
    has_d, has_bias = D is not None, delta_bias is not None
    Bv, Cv, G, A2, Dc, biasc, strides = _prepare(u, delta, A, B, C, D, z, delta_bias)
    Dg = Dtot // G
    bmeta, extra = _bwd_blocks(Dg, N, meta["BLOCK_L"], tn, num_warps, block_d, share)
    n_dblocks = triton.cdiv(Dg, bmeta["BLOCK_D"])
    f32 = dict(device=u.device, dtype=torch.float32)
    du = torch.empty(batch, Dtot, L, device=u.device, dtype=dtypes[0])
    ddelta = torch.empty(batch, Dtot, L, device=u.device, dtype=dtypes[1])
    dz = torch.empty(batch, Dtot, L, device=u.device, dtype=dtypes[2]) if z is not None else None
    dB_part = torch.empty(batch, G, n_dblocks, N, L, **f32)  # sums over each program's channels
    dC_part = torch.empty(batch, G, n_dblocks, N, L, **f32)
    dA_part = torch.empty(batch, Dtot, N, **f32)  # sums over time, per batch element
    dD_part, dbias_part = torch.empty(batch, Dtot, **f32), torch.empty(batch, Dtot, **f32)
    gy = gy.contiguous()
    glast = glast.float().contiguous() if glast is not None else None
    dummy = A2
    grid = (n_dblocks, G, batch)
    _selective_scan_bwd[grid](
        u, delta, A2, Bv, Cv, Dc, dummy if z is None else z, biasc, gy, dummy if glast is None else glast, ck,
        du, ddelta, dummy if dz is None else dz, dB_part, dC_part, dA_part, dD_part, dbias_part,
        L, Dg, N, *strides,
        HAS_D=has_d, HAS_Z=z is not None, HAS_BIAS=has_bias, SOFTPLUS=bool(delta_softplus),
        HAS_GLAST=glast is not None, **bmeta, **extra)
    dB, dC = dB_part.sum(2), dC_part.sum(2)  # (b, G, N, L)
    if B.dim() == 3:
        dB = dB.sum(1)
    if C.dim() == 3:
        dC = dC.sum(1)
    return (du, ddelta, dA_part.sum(0), dB, dC, None if D is None else dD_part.sum(0), dz,
            None if delta_bias is None else dbias_part.sum(0))


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        y, last, ck, meta = selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                               save_checkpoints=True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ck)
        ctx.meta, ctx.delta_softplus = meta, delta_softplus
        # an output the loss does not use arrives as None, not as zeros: a last state that nothing reads then
        # costs nothing. With its gradient (HAS_GLAST) the adjoint starts from a loaded tensor, whose layout
        # Triton keeps through the loop: compiled for sm_90, 3257 instructions per warp-block instead of 1381
        # (1018 shuffles instead of 250), and 4278 us instead of 1802 on an H100 at B8 D2048 L2048 N16.
        ctx.set_materialize_grads(False)
        return y, last.to(u.dtype)

    @staticmethod
    def backward(ctx, gy, glast):
        u, delta, A, B, C, D, z, delta_bias, ck = ctx.saved_tensors
        if gy is None:
            gy = torch.zeros_like(u)
        grads = selective_scan_bwd(gy, glast, ck, ctx.meta, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus)
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        out = [None if (gr is None or not need) else gr.to(x.dtype)
               for gr, x, need in zip(grads, inputs, ctx.needs_input_grad)]
        return (*out, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
    """The selective scan in Triton (see the module docstring); arguments as ``ssm_edu.selective_scan``.

    Inputs float32, bfloat16 or float16, any strides. Returns y (batch, D, L)
    in u's dtype [and last_state (batch, D, N) in u's dtype]. Differentiable.
    """
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    for name, x in zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), tensors):
        if x is not None and x.dtype not in _SUPPORTED:
            raise ValueError(f"selective_scan(impl='triton') supports float32, bfloat16 and float16; "
                             f"got {name} {str(x.dtype).replace('torch.', '')}")
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors):
        y, last = _SelectiveScan.apply(*tensors, delta_softplus)
    else:
        y, last, _, _ = selective_scan_fwd(*tensors, delta_softplus=delta_softplus)
        last = last.to(u.dtype)
    return (y, last) if return_last_state else y
