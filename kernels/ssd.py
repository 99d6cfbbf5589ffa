"""Triton SSD, Mamba-2's chunked scan (chapter 8).

Shapes as in ``ssm_edu/ssd.py``: x (b, L, H, P), dt (b, L, H), A (H,),
B, C (b, L, G, N); Q is the chunk length.

Work split. Two kernels (a third for long sequences with few heads, below).

1. ``_ssd_cb``: one program per (batch, chunk, group) computes the chunk's
   C Bᵀ (Q, Q) with ``tl.dot``. C Bᵀ does not
   depend on the head, so with G groups it is computed G times per chunk
   instead of H times (H / G = 128 heads share it in the benchmark shape).
   It is stored in x's dtype (the products round it to that anyway), is
   small (b L Q G values) and stays in L2 for the next kernel.
2. ``_ssd_fwd``: one program per (batch, head, block of BLOCK_P of the P head
   dims) walks the chunks in order, carrying the state S = hᵀ (N, BLOCK_P) in
   registers, in float32. For chunk k, with a = Δ A log2(e) and its
   cumulative sum a⁺ inside the chunk:
     * diagonal block:  Y = (C Bᵀ ∘ exp2(a⁺_t - a⁺_s) [t >= s] ∘ Δ_s) X,
     * off-diagonal:    Y += exp2(a⁺_t) C S,            (the state entering k)
     * state update:    S <- exp2(a⁺_Q) S + (exp2(a⁺_Q - a⁺_s) Δ_s B_s)ᵀ X,
     * then Y + D x and ⊙ SiLU(z), stored in x's dtype.
   These are the four steps of the chunked algorithm (ssm_edu.ssd), fused:
   steps 2-4 share the state, which never leaves the registers.

Where the state lives, and why. The chunk states are (b, c, H, P, N): larger
than x itself when N > Q (for N = 128, Q = 64, twice x, and four times in
float32). A pipeline of separate kernels (chunk states, state passing,
output) writes and reads them several times; here they are never written,
and global memory sees x, dt, B, C and z read once (B, C once per head, from
L2), y written once, and the small C Bᵀ. The price is a sequential walk over
the L / Q chunks in each program, so parallelism comes from batch x heads x
P blocks: with fewer than two (batch, head) pairs per SM the launcher uses
two P blocks of 32.

Segments, for long sequences with few (batch, head) pairs. The launcher then
also splits L into segments of whole chunks (at least 64 each), one program
each, every segment after the first starting from a zero state.
``_ssd_fwd`` stores each segment's last state and total decay;
``_ssd_seg_fix`` folds those in order to get the state entering each segment
(step 3 once more) and adds what it contributes to the segment's outputs
(step 4 once more, decayed from the segment's start). The extra traffic (y
read and written again, C read again) buys parallelism where the GPU would
otherwise idle.

Measured (H100, bf16, B4 L4096 H128 P64 N128 G1, forward): 534 us, against
1164 us for mamba_ssm's mamba_chunk_scan_combined (chunk 256) and 1319 us for
fla's chunk_simple_gla in the same run; the roofline floor is 183 us.

Work per chunk and head: three matrix products of Q x Q x P, Q x N x P and
N x Q x P, on tensor cores (bfloat16 / float16 operands, float32
accumulation; float32 inputs use IEEE float32 products so that they meet the
1e-5 tolerance). Exponentials through exp2, with log2(e) folded into A.

Chunk length. The result does not depend on it, so the kernel uses
chunk_size rounded up to a power of two and clamped to [16, 64]: ``tl.dot``
needs at least 16, and beyond 64 the Q x Q tiles cost more registers and
work than the shorter walk saves (measured: Q = 32, 64, 128 took 647, 534
and 939 us on the shape above). Where the tiles would not fit in shared
memory (float32 with N = 256, say) the launcher drops a pipeline stage, then
halves Q, then the P block. L need not be a multiple: steps past L
load Δ = 0 (decay 1, no input) and are not stored.

Precision. Δ (with bias and softplus), the decays, the state and every
accumulation are float32. In Triton's CPU interpreter, half-precision
arithmetic is not supported: the launcher computes in float32 there.

Backward. ``ssd_triton`` is differentiable; ``ssd_bwd`` runs the four steps in
reverse in four launches:

1. ``_ssd_bwd_states``, one program per (batch, head, P block): a forward walk
   (steps 2 and 3 again) that stores the state entering every chunk, S_{k-1}.
2. ``_ssd_bwd_dstates``, the same programs walking backwards: the state's
   gradient passes from chunk to chunk as the state itself did, reversed,
       dS_{k-1} = exp(α_k) dS_k + Σ_{t in k} exp(a⁺_t) dy_t C_tᵀ
   from the final state's gradient; it stores dS_k for every chunk, the initial
   state's gradient, exp(α_k) <dS_k, S_{k-1}> (the part of dL/dα_k that needs
   both, α_k the chunk's total log-decay) and, with a gate, dz. For Mamba-3's
   rotated keys and queries (``turns``) also -<dS, J S> per angle pair at
   every chunk's start: see kernels/mamba3_ssd.py.
3. ``_ssd_bwd_chunk``, output side, one program per (batch, chunk, group, split
   of the group's heads), heads in turn: Σ_h M ∘ (dY X̄ᵀ), the gradient of C Bᵀ,
   and with it dC and the diagonal part of dB; dC's part from S_{k-1}. Where a
   split has one head (G = H, as on Mamba-3's path), one program per run of up to
   8 chunks of that head instead, in turn: a loop over one head has one iteration
   and nothing to pipeline, a loop over chunks overlaps the next chunk's loads with
   this one's products (``chunks_per_program``; benchmarks/notes/ssd.md).
4. ``_ssd_bwd_chunk``, input side: dX̄ = (M ∘ C Bᵀ)ᵀ dY + exp(α - a⁺_s) B dSᵀ,
   then dx, dΔ (with the softplus and dt_bias), dD and dB's part from dS_k.
dB and dC are sums over the heads of a group: a program loops over heads and
writes one float32 part per split and block of P, all parts of both sides in
one buffer, summed afterwards by one reduction (none for a single part), as
are dA and dD; Mamba-3's path hands the parts of dB and dC on unsummed.

The decays' gradient. a_r = Δ_r A enters M[t, s] for every s < r <= t and every
state that crosses step r, so dL/da_r sums exactly those pairs: within the
chunk a cumulative sum of Z = dL/dM ∘ M down its columns, plus the parts through
S_{k-1} and dS_k. Written instead as (all pairs to t) - (all pairs from s) summed
over the chunk, it cancels: float32 dA and dt_bias then erred by up to 5e-6
relative (1.2e-5 with the cancellation across chunks), ten times PyTorch's
autograd on the same inputs; summed by pairs they match it (2e-7 to 6e-7).

Recomputed, not stored (goal shape B4 L4096 H128 P64 N128 bf16, Q = 64). The
forward saves its inputs only (and, with a gate, y before the gate, b L H P
values like x, for dz). The chunk states are (b, c, H, P, N), 268 M numbers,
537 MB in bf16: twice x. Storing them in the forward would cost that write and
keep them alive until the backward; walk 1 recomputes them from x (268 MB) and
B with P N multiply-adds per step. Their gradients are as large and only walk 2
makes them. C Bᵀ (b c G Q² = 1 M numbers) is recomputed per chunk and group and
shared by the group's 128 heads; the decays come from Δ in every kernel.

Traffic per (batch, step, head), in bytes (bf16): walk 1 reads x (128) and
writes S (256); walk 2 reads dy (128) and S (256) and writes dS (256); the
output side reads x, dy (256) and S (256); the input side reads x, dy (256) and
dS (256) and writes dx (128): 2176 bytes, 4.6 GB at the goal shape, 1.5 ms at
3 TB/s. One chunk kernel for both sides would read x and dy once (1920 bytes),
but holds too much: compiled for sm_90 (Triton 3.7) it needs 255 registers and
spills 1.5 KB a thread at 8 warps. The two sides compile to 255 and 247
registers with 28/24 bytes of spill (stores/loads) and none (Triton 3.7.1); the
walks to 178 and 185, no spill.
Block sizes per case come from that compile (``benchmarks/sweep_ssd.py
--compile``): float32 products and N = 256 take chunks of 32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import interpreting, next_pow2, sum_parts
from ._launch import num_sms as _num_sms  # a module name the offline compiles replace

__all__ = ["ssd_triton", "ssd_fwd", "ssd_bwd"]

_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _ssd_cb(
    B_ptr, C_ptr, CB_ptr,
    L, G, N, n_chunks,
    IEEE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)  # batch * n_chunks + chunk
    g = tl.program_id(1)
    bi = pid // n_chunks
    c = pid % n_chunks
    q = tl.arange(0, BLOCK_Q)
    t = c * BLOCK_Q + q  # (Q,) time steps of the chunk
    row = (bi * L + t).to(tl.int64) * (G * N) + g * N  # (Q,)
    acc = tl.zeros([BLOCK_Q, BLOCK_Q], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = (t < L)[:, None] & (n < N)[None, :]
        cc = tl.load(C_ptr + row[:, None] + n[None, :], mask=mask, other=0.0)  # (Q, BLOCK_N)
        bb = tl.load(B_ptr + row[:, None] + n[None, :], mask=mask, other=0.0)
        if IEEE:
            acc += tl.dot(cc, tl.trans(bb), input_precision="ieee")
        else:
            acc += tl.dot(cc, tl.trans(bb))
    out = CB_ptr + (pid * G + g).to(tl.int64) * (BLOCK_Q * BLOCK_Q)  # CB (b, c, G, Q, Q)
    tl.store(out + q[:, None] * BLOCK_Q + q[None, :], acc.to(CB_ptr.dtype.element_ty))


@triton.jit
def _load_dt(dt_ptr, row, h, H, t_ok, bias, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr):
    """Δ for one chunk, (Q,) float32: + dt_bias, softplus, and exactly 0 past L."""
    dt = tl.load(dt_ptr + row * H + h, mask=t_ok, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += bias
    if DT_SOFTPLUS:
        u = tl.exp(tl.minimum(dt, 20.0))
        v = 1.0 + u
        # log1p(u) to full precision without a log1p: log(v) u / (v - 1) (Goldberg)
        log1p_u = tl.where(v == 1.0, u, tl.log(v) * (u / (v - 1.0)))
        dt = tl.where(dt > 20.0, dt, log1p_u)
    return tl.where(t_ok, dt, 0.0)


@triton.jit
def _ssd_fwd(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, CB_ptr, D_ptr, z_ptr, dt_bias_ptr, h0_ptr, y_ptr, hT_ptr, seg_a_ptr,
    ypre_ptr, L, H, G, P, N, n_chunks, seg_len,
    HAS_D: tl.constexpr, D_PER_DIM: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, STORE_STATE: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, STORE_PRE: tl.constexpr = False,
):
    pid = tl.program_id(0)  # batch * H + head
    seg = tl.program_id(2)  # segment of seg_len chunks (one segment unless the launcher splits L)
    n_seg = tl.num_programs(2)
    bi = pid // H
    h = pid % H
    g = h // (H // G)  # the group of B and C this head reads
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # (BLOCK_P,) head dims
    n = tl.arange(0, BLOCK_N)  # (N,)
    q = tl.arange(0, BLOCK_Q)  # (Q,)
    p_ok = p < P
    n_ok = n < N
    dot_t = x_ptr.dtype.element_ty  # tensor-core operand type (float32 only with IEEE)

    A2 = tl.load(A_ptr + h).to(tl.float32) * 1.4426950408889634  # log2(e) folded in: exp(Δ A) = exp2(Δ A2)
    bias = 0.0
    if HAS_DT_BIAS:
        bias = tl.load(dt_bias_ptr + h).to(tl.float32)
    if HAS_D:
        if D_PER_DIM:
            Dh = tl.load(D_ptr + h * P + p, mask=p_ok, other=0.0).to(tl.float32)  # (BLOCK_P,)
        else:
            Dh = tl.load(D_ptr + h).to(tl.float32)
    state_offs = (pid.to(tl.int64) * P + p[None, :]) * N + n[:, None]  # hᵀ (N, BLOCK_P) of (b, H, P, N)
    state_mask = n_ok[:, None] & p_ok[None, :]
    if HAS_H0:  # h_{-1} enters the first segment only; the others start from zero
        S = tl.load(h0_ptr + state_offs, mask=state_mask & (seg == 0), other=0.0).to(tl.float32)  # (N, BLOCK_P)
    else:
        S = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)
    causal = q[:, None] >= q[None, :]  # (Q, Q): t >= s
    last = q == BLOCK_Q - 1
    a_seg = tl.zeros([BLOCK_Q], dtype=tl.float32)  # the segment's log2 decays, summed over its chunks

    for c in range(seg * seg_len, tl.minimum(seg * seg_len + seg_len, n_chunks)):
        t = c * BLOCK_Q + q
        t_ok = t < L
        row = (bi * L + t).to(tl.int64)  # (Q,) flat (batch, time) index
        dt = _load_dt(dt_ptr, row, h, H, t_ok, bias, HAS_DT_BIAS, DT_SOFTPLUS)  # (Q,)
        a_seg += dt * A2
        a_cum = tl.cumsum(dt * A2, axis=0)  # (Q,) log2 decay from the chunk's start to t
        a_end = tl.sum(tl.where(last, a_cum, 0.0), axis=0)  # the whole chunk's log2 decay

        mask_x = t_ok[:, None] & p_ok[None, :]
        x_offs = (row[:, None] * H + h) * P + p[None, :]  # (Q, BLOCK_P)
        x = tl.load(x_ptr + x_offs, mask=mask_x, other=0.0)  # (Q, BLOCK_P)
        mask_bc = t_ok[:, None] & n_ok[None, :]
        bc_offs = (row[:, None] * G + g) * N + n[None, :]  # (Q, N)
        Cc = tl.load(C_ptr + bc_offs, mask=mask_bc, other=0.0)
        Bc = tl.load(B_ptr + bc_offs, mask=mask_bc, other=0.0)
        cb_base = CB_ptr + ((bi * n_chunks + c) * G + g).to(tl.int64) * (BLOCK_Q * BLOCK_Q)
        cb = tl.load(cb_base + q[:, None] * BLOCK_Q + q[None, :]).to(tl.float32)  # (Q, Q)

        # 1. diagonal block: (C Bᵀ ∘ M ∘ Δ_s) X, M = exp2(a⁺_t - a⁺_s) on and below the diagonal
        decay = tl.exp2(tl.where(causal, a_cum[:, None] - a_cum[None, :], float("-inf")))  # (Q, Q)
        w = cb * decay * dt[None, :]
        # 4. off-diagonal: the state entering the chunk, decayed to t, read out by C_t
        out_decay = tl.exp2(a_cum)  # (Q,)
        # 2 + 3. the state leaving the chunk: decay S over the chunk, add the chunk's inputs
        in_w = tl.exp2(a_end - a_cum) * dt  # (Q,) weight of step s in the chunk's final state
        wB = Bc.to(tl.float32) * in_w[:, None]  # (Q, N)
        if IEEE:
            y = tl.dot(w, x, input_precision="ieee")
            y += tl.dot(Cc, S, input_precision="ieee") * out_decay[:, None]
            S = S * tl.exp2(a_end) + tl.dot(tl.trans(wB), x, input_precision="ieee")
        else:
            y = tl.dot(w.to(dot_t), x)  # (Q, BLOCK_P)
            y += tl.dot(Cc, S.to(dot_t)) * out_decay[:, None]
            S = S * tl.exp2(a_end) + tl.dot(tl.trans(wB.to(dot_t)), x)  # (N, BLOCK_P)

        if HAS_D:
            if D_PER_DIM:
                y += x.to(tl.float32) * Dh[None, :]
            else:
                y += x.to(tl.float32) * Dh
        if STORE_PRE:  # y before the gate, for the backward pass's dz
            tl.store(ypre_ptr + x_offs, y.to(ypre_ptr.dtype.element_ty), mask=mask_x)
        if HAS_Z:
            zz = tl.load(z_ptr + x_offs, mask=mask_x, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(y_ptr + x_offs, y.to(y_ptr.dtype.element_ty), mask=mask_x)

    if STORE_STATE:  # the final state, or with several segments each one's state from a zero start
        seg_offs = (((bi * n_seg + seg) * H + h).to(tl.int64) * P + p[None, :]) * N + n[:, None]
        tl.store(hT_ptr + seg_offs, S, mask=state_mask)
        if tl.program_id(1) == 0:
            tl.store(seg_a_ptr + (bi * n_seg + seg) * H + h, tl.sum(a_seg, axis=0))


@triton.jit
def _ssd_seg_fix(
    dt_ptr, A_ptr, C_ptr, z_ptr, dt_bias_ptr, seg_ptr, seg_a_ptr, y_ptr, hT_ptr, ypre_ptr,
    L, H, G, P, N, n_chunks, seg_len, n_seg,
    HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, IEEE: tl.constexpr,
    STORE_FINAL: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    STORE_PRE: tl.constexpr = False,
):
    """Segment k = 1, 2, ...: add what the state entering it contributes (steps 3 and 4 again).

    Program k folds the states the segments before it left, in order
    (S <- exp2(a_seg_j) S + S_j), which gives the state entering segment k;
    then it walks k's chunks adding exp2(a from the segment's start to t) C_t S.
    Program k = n_seg has no chunks left: it stores the final state.
    """
    pid = tl.program_id(0)  # batch * H + head
    bi = pid // H
    h = pid % H
    g = h // (H // G)
    seg = tl.program_id(2) + 1
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    q = tl.arange(0, BLOCK_Q)
    p_ok = p < P
    n_ok = n < N
    state_mask = n_ok[:, None] & p_ok[None, :]
    A2 = tl.load(A_ptr + h).to(tl.float32) * 1.4426950408889634
    bias = 0.0
    if HAS_DT_BIAS:
        bias = tl.load(dt_bias_ptr + h).to(tl.float32)
    S = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)  # hᵀ entering segment seg
    for j in range(0, seg):
        seg_offs = (((bi * n_seg + j) * H + h).to(tl.int64) * P + p[None, :]) * N + n[:, None]
        a_j = tl.load(seg_a_ptr + (bi * n_seg + j) * H + h)
        S = S * tl.exp2(a_j) + tl.load(seg_ptr + seg_offs, mask=state_mask, other=0.0)
    if STORE_FINAL:
        final_offs = (pid.to(tl.int64) * P + p[None, :]) * N + n[:, None]
        tl.store(hT_ptr + final_offs, S, mask=state_mask & (seg == n_seg))
    if IEEE:
        S_op = S
    else:
        S_op = S.to(y_ptr.dtype.element_ty)
    a_run = tl.zeros([BLOCK_Q], dtype=tl.float32)  # log2 decay from the segment's start to the chunk's start
    for c in range(seg * seg_len, tl.minimum(seg * seg_len + seg_len, n_chunks)):  # empty for seg = n_seg
        t = c * BLOCK_Q + q
        t_ok = t < L
        row = (bi * L + t).to(tl.int64)
        a = _load_dt(dt_ptr, row, h, H, t_ok, bias, HAS_DT_BIAS, DT_SOFTPLUS) * A2
        a_cum = a_run + tl.cumsum(a, axis=0)  # (Q,)
        a_run += tl.sum(a, axis=0)
        Cc = tl.load(C_ptr + (row[:, None] * G + g) * N + n[None, :], mask=t_ok[:, None] & n_ok[None, :], other=0.0)
        if IEEE:
            corr = tl.dot(Cc, S_op, input_precision="ieee")
        else:
            corr = tl.dot(Cc, S_op)
        corr = corr * tl.exp2(a_cum)[:, None]  # (Q, BLOCK_P)
        mask_x = t_ok[:, None] & p_ok[None, :]
        x_offs = (row[:, None] * H + h) * P + p[None, :]
        if STORE_PRE:
            pre = tl.load(ypre_ptr + x_offs, mask=mask_x, other=0.0).to(tl.float32) + corr
            tl.store(ypre_ptr + x_offs, pre.to(ypre_ptr.dtype.element_ty), mask=mask_x)
        if HAS_Z:  # the gate multiplies the whole SSM output, the correction included
            zz = tl.load(z_ptr + x_offs, mask=mask_x, other=0.0).to(tl.float32)
            corr = corr * zz * tl.sigmoid(zz)
        y = tl.load(y_ptr + x_offs, mask=mask_x, other=0.0).to(tl.float32) + corr
        tl.store(y_ptr + x_offs, y.to(y_ptr.dtype.element_ty), mask=mask_x)


# Shared memory, in the rough units of _smem_bytes: calibrated on an H100 (228 KiB per SM) where float32
# N = 128 (Q 64, P block 64, 2 stages) compiled and float32 N = 256 with the same blocks ran out.
_SMEM_BUDGET = 200 * 1024  # with a margin


def _smem_bytes(elem, Q, block_p, block_n, stages):
    """Estimate: the tiles each pipeline stage loads (x, B, C, C Bᵀ) plus the state and B operands of the products."""
    return elem * (stages * (Q * block_p + 2 * Q * block_n + Q * Q) + block_n * block_p + Q * block_n)


def ssd_fwd(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
            initial_states=None, return_final_states=False, return_pre_gate=False,
            block_q=None, block_p=None, n_seg=None, num_warps=None, num_stages=None, final_dtype=None):
    """Launch the kernels. Returns (y, final_states or None), in x's dtype.

    ``final_dtype`` keeps the final state in another dtype (it is computed in
    float32; Mamba-3's path through these kernels hands it on in float32).

    Inputs as in ``ssm_edu.ssd`` (already validated); B and C are cast to x's
    dtype. With ``return_pre_gate`` (and z), also y before the gate, y + D x
    (the backward pass's dz needs it), as a third result. The keyword
    arguments after it override the launch parameters (benchmarks and tests only).
    """
    if x.dtype not in _SUPPORTED:
        raise ValueError(f"ssd(impl='triton') supports float32, bfloat16 and float16 x; got {x.dtype}")
    given = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    if interpreting() and any(t is not None and t.dtype != torch.float32 for t in given):
        f = lambda t: None if t is None else t.float()  # noqa: E731  (the interpreter computes in float32 only)
        y, hT, *pre = ssd_fwd(f(x), f(dt), f(A), f(B), f(C), chunk_size, f(D), f(z), f(dt_bias), dt_softplus,
                              f(initial_states), return_final_states, return_pre_gate, block_q, block_p, n_seg)
        return (y.to(x.dtype), None if hT is None else hT.to(final_dtype or x.dtype), *(t.to(x.dtype) for t in pre))
    b, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    x, dt, A = x.contiguous(), dt.contiguous(), A.contiguous()
    B, C = B.to(x.dtype).contiguous(), C.to(x.dtype).contiguous()
    BLOCK_N = max(16, next_pow2(N))
    ieee = x.dtype == torch.float32
    Q = block_q or min(max(next_pow2(chunk_size), 16), 64)
    if interpreting():
        block_p = block_p or max(16, min(next_pow2(P), 32))
        stages, n_seg, extra = 1, n_seg or 1, {}
    else:
        sms = _num_sms(x.device)
        if block_p is None:  # a second P block per head when (batch, head) pairs cannot fill the GPU
            block_p = max(16, min(next_pow2(P), 64))
            if block_p == 64 and b * H < 2 * sms:
                block_p = 32
        stages = num_stages or 2
        if block_q is None:  # fit shared memory: fewer pipeline stages, then shorter chunks, then fewer P
            while _smem_bytes(x.element_size(), Q, block_p, BLOCK_N, stages) > _SMEM_BUDGET:
                if stages > 1:
                    stages -= 1
                elif Q > 32:
                    Q //= 2
                elif block_p > 16:
                    block_p //= 2
                else:
                    break
        n_chunks = triton.cdiv(L, Q)
        if n_seg is None:  # long sequences with few (batch, head, P block): split L into segments too
            programs = b * H * triton.cdiv(P, block_p)
            n_seg = max(1, min(triton.cdiv(2 * sms, programs), n_chunks // 64)) if programs < sms else 1
        extra = dict(num_warps=num_warps or 4, num_stages=stages)
    n_chunks = triton.cdiv(L, Q)
    seg_len = triton.cdiv(n_chunks, min(n_seg, n_chunks))
    n_seg = triton.cdiv(n_chunks, seg_len)  # no empty segment

    CB = torch.empty(b, n_chunks, G, Q, Q, device=x.device, dtype=x.dtype)  # rounded like the products' operands
    cb_n = min(BLOCK_N, 128)
    _ssd_cb[(b * n_chunks, G)](B, C, CB, L, G, N, n_chunks, IEEE=ieee, BLOCK_Q=Q, BLOCK_N=cb_n,
                               **({} if interpreting() else dict(num_warps=4)))

    y = torch.empty_like(x)
    pre = return_pre_gate and z is not None
    y_pre = torch.empty_like(x) if pre else y
    store_state = return_final_states or n_seg > 1
    # each segment's last state (from h0 for the first, from zero for the others) and its total log2 decay
    seg_states = torch.empty(b, n_seg, H, P, N, device=x.device, dtype=torch.float32) if store_state else y
    seg_a = torch.empty(b, n_seg, H, device=x.device, dtype=torch.float32) if store_state else y
    dummy = x
    D_ = dummy if D is None else D.contiguous()
    z_ = dummy if z is None else z.contiguous()
    bias_ = dummy if dt_bias is None else dt_bias.contiguous()
    h0_ = dummy if initial_states is None else initial_states.contiguous()
    flags = dict(HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus), IEEE=ieee,
                 BLOCK_Q=Q, BLOCK_P=block_p, BLOCK_N=BLOCK_N, **extra)
    _ssd_fwd[(b * H, triton.cdiv(P, block_p), n_seg)](
        x, dt, A, B, C, CB, D_, z_, bias_, h0_, y, seg_states, seg_a, y_pre,
        L, H, G, P, N, n_chunks, seg_len,
        HAS_D=D is not None, D_PER_DIM=D is not None and D.dim() == 2, HAS_H0=initial_states is not None,
        STORE_STATE=store_state, STORE_PRE=pre, **flags,
    )
    extra_out = (y_pre,) if return_pre_gate else ()
    if n_seg == 1:
        return (y, seg_states[:, 0].to(final_dtype or x.dtype) if return_final_states else None, *extra_out)
    final = torch.empty(b, H, P, N, device=x.device, dtype=torch.float32) if return_final_states else y
    n_fix = n_seg if return_final_states else n_seg - 1  # program n_seg - 1 stores the final state
    _ssd_seg_fix[(b * H, triton.cdiv(P, block_p), n_fix)](
        dt, A, C, z_, bias_, seg_states, seg_a, y, final, y_pre,
        L, H, G, P, N, n_chunks, seg_len, n_seg, STORE_FINAL=bool(return_final_states), STORE_PRE=pre, **flags,
    )
    return (y, final.to(final_dtype or x.dtype) if return_final_states else None, *extra_out)


# ---------------------------------------------------------------- backward


@triton.jit
def _mm(a, b, IEEE: tl.constexpr):
    """a @ b accumulated in float32: IEEE float32 products for float32 work, else tensor cores (a, b half)."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _mma(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b, in place."""
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _chunk_decays(dt_ptr, row, h, H, t_ok, bias, A2, last, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr):
    """Δ (Q,), the log2 decays a⁺ from the chunk's start to t (Q,) and the chunk's total (scalar)."""
    dt = _load_dt(dt_ptr, row, h, H, t_ok, bias, HAS_DT_BIAS, DT_SOFTPLUS)
    a_cum = tl.cumsum(dt * A2, axis=0)
    return dt, a_cum, tl.sum(tl.where(last, a_cum, 0.0), axis=0)


@triton.jit
def _ssd_bwd_states(
    x_ptr, dt_ptr, A_ptr, B_ptr, dt_bias_ptr, h0_ptr, st_ptr,
    L, H, G, P, N, n_chunks,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Forward walk (steps 2 and 3 again): store the state entering every chunk, S_{k-1} (P, N), in st."""
    pid = tl.program_id(0)  # batch * H + head
    bi = pid // H
    h = pid % H
    g = h // (H // G)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    q = tl.arange(0, BLOCK_Q)
    st_mask = (p < P)[:, None] & (n < N)[None, :]
    last = q == BLOCK_Q - 1
    A2 = tl.load(A_ptr + h).to(tl.float32) * 1.4426950408889634
    bias = 0.0
    if HAS_DT_BIAS:
        bias = tl.load(dt_bias_ptr + h).to(tl.float32)
    if HAS_H0:
        S = tl.load(h0_ptr + (pid.to(tl.int64) * P + p[:, None]) * N + n[None, :], mask=st_mask, other=0.0)
        S = S.to(tl.float32)  # (P, N)
    else:
        S = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for c in range(0, n_chunks):
        st_offs = (((bi * n_chunks + c) * H + h).to(tl.int64) * P + p[:, None]) * N + n[None, :]
        tl.store(st_ptr + st_offs, S.to(st_ptr.dtype.element_ty), mask=st_mask)
        t = c * BLOCK_Q + q
        t_ok = t < L
        row = (bi * L + t).to(tl.int64)
        dt, a_cum, a_end = _chunk_decays(dt_ptr, row, h, H, t_ok, bias, A2, last, HAS_DT_BIAS, DT_SOFTPLUS)
        xT = tl.load(x_ptr + (row[None, :] * H + h) * P + p[:, None], mask=(p < P)[:, None] & t_ok[None, :],
                     other=0.0)  # Xᵀ (P, Q)
        Bc = tl.load(B_ptr + (row[:, None] * G + g) * N + n[None, :], mask=t_ok[:, None] & (n < N)[None, :],
                     other=0.0)  # (Q, N)
        wB = Bc.to(tl.float32) * (tl.exp2(a_end - a_cum) * dt)[:, None]  # (Q, N)
        S = S * tl.exp2(a_end) + _mm(xT, wB.to(xT.dtype), IEEE)  # (P, N)


@triton.jit
def _ssd_bwd_dstates(
    dout_ptr, z_ptr, ypre_ptr, dz_ptr, dt_ptr, A_ptr, C_ptr, dt_bias_ptr, dhT_ptr, st_ptr, dst_ptr, dh0_ptr, g_ptr,
    turn_ptr, L, H, G, P, N, n_chunks,
    HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, HAS_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, TURN: tl.constexpr = False,
):
    """Reverse walk (step 3 backwards): store dS_k, the gradient of the state leaving every chunk k.

    dS_{k-1} = exp(α_k) dS_k + Σ_{t in k} exp(a⁺_t) dy_t C_tᵀ, from dS_{c-1} = the final state's
    gradient (or zero); dS_{-1} is the initial state's gradient. Also the part of dL/dα_k (α_k the
    chunk's total log-decay) that needs both states, exp(α_k) <dS_k, S_{k-1}>, in g (this block of P);
    and with z, dz from the output before the gate (ypre, stored by the forward pass).
    With TURN (Mamba-3's rotated keys and queries), also -<dS, J S> per pair (2i, 2i+1) of the N axis
    for the state S entering every chunk and its gradient dS (float32, from the registers), summed over
    this block of P, in turn (n_walk, b, H, n_chunks, N/2); J(e, o) = (-o, e), the rotations' generator.
    Compiled for sm_90 at Mamba-3's goal shape (bf16, B4 L4096 H32 P64 N128, one group per head), TURN
    takes this walk from 186 to 245 registers, no spill (swapping each pair by a second load of S instead
    of tl.split took 254).
    """
    pid = tl.program_id(0)  # batch * H + head
    bi = pid // H
    h = pid % H
    g = h // (H // G)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    q = tl.arange(0, BLOCK_Q)
    st_mask = (p < P)[:, None] & (n < N)[None, :]
    last = q == BLOCK_Q - 1
    A2 = tl.load(A_ptr + h).to(tl.float32) * 1.4426950408889634
    bias = 0.0
    if HAS_DT_BIAS:
        bias = tl.load(dt_bias_ptr + h).to(tl.float32)
    fin_offs = (pid.to(tl.int64) * P + p[:, None]) * N + n[None, :]
    if HAS_DHT:
        dS = tl.load(dhT_ptr + fin_offs, mask=st_mask, other=0.0).to(tl.float32)  # (P, N)
    else:
        dS = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        st_offs = (((bi * n_chunks + c) * H + h).to(tl.int64) * P + p[:, None]) * N + n[None, :]
        tl.store(dst_ptr + st_offs, dS.to(dst_ptr.dtype.element_ty), mask=st_mask)
        t = c * BLOCK_Q + q
        t_ok = t < L
        row = (bi * L + t).to(tl.int64)
        dt, a_cum, a_end = _chunk_decays(dt_ptr, row, h, H, t_ok, bias, A2, last, HAS_DT_BIAS, DT_SOFTPLUS)
        S_prev = tl.load(st_ptr + st_offs, mask=st_mask, other=0.0).to(tl.float32)
        tl.store(g_ptr + ((bi * n_chunks + c) * H + h) * tl.num_programs(1) + tl.program_id(1),
                 tl.exp2(a_end) * tl.sum(tl.sum(dS * S_prev, axis=1), axis=0))
        offsT = (row[None, :] * H + h) * P + p[:, None]  # (P, Q)
        maskT = (p < P)[:, None] & t_ok[None, :]
        dyT = tl.load(dout_ptr + offsT, mask=maskT, other=0.0).to(tl.float32)  # dYᵀ (P, Q)
        if HAS_Z:  # the gradient reaching the SSM output: dout ⊙ SiLU(z); and dz = dout ⊙ y_pre ⊙ SiLU'(z)
            zT = tl.load(z_ptr + offsT, mask=maskT, other=0.0).to(tl.float32)
            sT = tl.sigmoid(zT)
            preT = tl.load(ypre_ptr + offsT, mask=maskT, other=0.0).to(tl.float32)
            tl.store(dz_ptr + offsT, (dyT * preT * sT * (1.0 + zT * (1.0 - sT))).to(dz_ptr.dtype.element_ty),
                     mask=maskT)
            dyT = dyT * zT * sT
        Cc = tl.load(C_ptr + (row[:, None] * G + g) * N + n[None, :], mask=t_ok[:, None] & (n < N)[None, :],
                     other=0.0)  # (Q, N)
        dyT = dyT * tl.exp2(a_cum)[None, :]
        dS = dS * tl.exp2(a_end) + _mm(dyT.to(Cc.dtype), Cc, IEEE)  # now the gradient of S_prev
        if TURN:  # -<dS, J S_prev> = Σ_p (dS_e S_o - dS_o S_e) per pair (e, o) = (2i, 2i + 1)
            s_e, s_o = tl.split(tl.reshape(S_prev, (BLOCK_P, BLOCK_N // 2, 2)))
            d_e, d_o = tl.split(tl.reshape(dS, (BLOCK_P, BLOCK_N // 2, 2)))
            i = tl.arange(0, BLOCK_N // 2)
            turn_offs = ((tl.program_id(1) * tl.num_programs(0) + pid) * n_chunks + c).to(tl.int64) * (N // 2) + i
            tl.store(turn_ptr + turn_offs, tl.sum(d_e * s_o - d_o * s_e, axis=0), mask=i < N // 2)
    if STORE_DH0:
        tl.store(dh0_ptr + fin_offs, dS, mask=st_mask)


@triton.jit
def _chunk_start(B_ptr, C_ptr, L, H, G, P, N, bi, c, g, q, p, n, p_ok, IEEE: tl.constexpr, BLOCK_Q: tl.constexpr):
    """Chunk c of batch bi: its B and C (Q, N) of group g, C Bᵀ transposed, and where its tiles lie."""
    t = c * BLOCK_Q + q
    t_ok = t < L
    row = (bi * L + t).to(tl.int64)  # (Q,)
    mask_bc = t_ok[:, None] & (n < N)[None, :]
    bc_offs = (row[:, None] * G + g) * N + n[None, :]
    Bc = tl.load(B_ptr + bc_offs, mask=mask_bc, other=0.0)  # (Q, N)
    Cc = tl.load(C_ptr + bc_offs, mask=mask_bc, other=0.0)
    CBt = _mm(Bc, tl.trans(Cc), IEEE)  # [s, t] = B_s · C_t (the forward's C Bᵀ, transposed)
    # the offsets after the loads: SSD's input side compiles to 247 registers so, to 249 with them first (sm_90)
    mask_x = t_ok[:, None] & p_ok[None, :]
    st_mask = p_ok[:, None] & (n < N)[None, :]
    x_tile = q[:, None] * (H * P) + p[None, :]  # (Q, BLOCK_P) offsets in (b, L, H, P)
    st_tile = p[:, None] * N + n[None, :]  # (BLOCK_P, N) offsets in (b, c, H, P, N)
    row0 = (bi * L + c * BLOCK_Q).to(tl.int64)  # the chunk's first (batch, time) row
    return t_ok, row, row0, mask_bc, mask_x, st_mask, x_tile, st_tile, Bc, Cc, CBt


@triton.jit
def _chunk_head(
    x_ptr, dt_ptr, A_ptr, D_ptr, z_ptr, dout_ptr, dt_bias_ptr, st_ptr, dst_ptr, dx_ptr, ddt_ptr, dA_ptr, dD_ptr,
    g_ptr, H, P, N, n_chunks, n_walk, h, bi, c, bc, pb, row0, part_offs, ddt_part,
    q, p, p_ok, t_ok, last, causal, mask_x, st_mask, x_tile, st_tile, Bc, Cc, CBt, dCBt, dB, dC,
    OUT: tl.constexpr, IN: tl.constexpr, HAS_D: tl.constexpr, D_PER_DIM: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, IEEE: tl.constexpr, BLOCK_Q: tl.constexpr,
    DDT_DECAY_ONLY: tl.constexpr, DXB_APART: tl.constexpr = False,
):
    """Head h's part of chunk c (bc = bi n_chunks + c): stores dx, dD and its parts of dL/dΔ and dL/dA;
    returns the chunk's sums over heads, dCBt, dB and dC, with the head's terms added.
    DXB_APART (input side): dL/dX̄'s two parts, (M ∘ C Bᵀ)ᵀ dY and the states' exp(α - a⁺_s) B dSᵀ, are
    joined by a fused multiply-add, not an addition, which Triton folds into the first product as its
    accumulator. B dSᵀ then fed a product: a "chained dot", for which Triton puts the 8 warps on the 64 rows
    alone, so each warpgroup computed all of it (twice its HGMMA, 32 registers a thread instead of 16), and at
    P blocks of 64 the head loop spilled (benchmarks/notes/ssd.md). One rounding less: equal up to float32
    rounding (bit for bit in the interpreter, whose fma is a product and a sum)."""
    dot_t = Bc.dtype
    A = tl.load(A_ptr + h).to(tl.float32)
    raw = tl.load(dt_ptr + row0 * H + h + q * H, mask=t_ok, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        raw += tl.load(dt_bias_ptr + h).to(tl.float32)
    dt = raw
    if DT_SOFTPLUS:
        u = tl.exp(tl.minimum(raw, 20.0))
        v = 1.0 + u
        dt = tl.where(raw > 20.0, raw, tl.where(v == 1.0, u, tl.log(v) * (u / (v - 1.0))))
    dt = tl.where(t_ok, dt, 0.0)  # (Q,) Δ
    a_cum = tl.cumsum(dt * (A * 1.4426950408889634), axis=0)  # log2 decay from the chunk's start to t
    a_end = tl.sum(tl.where(last, a_cum, 0.0), axis=0)
    x_offs = (row0 * H + h) * P + x_tile
    x = tl.load(x_ptr + x_offs, mask=mask_x, other=0.0)
    xf = x.to(tl.float32)
    dy = tl.load(dout_ptr + x_offs, mask=mask_x, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + x_offs, mask=mask_x, other=0.0).to(tl.float32)
        dy = dy * zz * tl.sigmoid(zz)  # dL/d(y_ssm + D x)
    if HAS_D:
        if D_PER_DIM:
            Dh = tl.load(D_ptr + h * P + p, mask=p_ok, other=0.0).to(tl.float32)[None, :]
        else:
            Dh = tl.load(D_ptr + h).to(tl.float32)
    xb = xf * dt[:, None]  # X̄ = Δ x (Q, BLOCK_P)
    xb_op = xb.to(dot_t)
    dy_op = dy.to(dot_t)
    s_offs = ((bi * n_chunks + c) * H + h).to(tl.int64) * (P * N) + st_tile
    # step 1 backwards: the diagonal block T = M ∘ C Bᵀ, transposed
    Lt = tl.exp2(tl.where(causal, a_cum[None, :] - a_cum[:, None], float("-inf")))  # [s, t] decay s -> t
    Wt = (Lt * CBt).to(dot_t)
    da = tl.zeros([BLOCK_Q], dtype=tl.float32)  # dL/da_r, a_r = Δ_r A (natural log units)
    ddt = tl.zeros([BLOCK_Q], dtype=tl.float32)  # dL/dΔ through X̄ = Δ x
    if OUT:
        dCBt_h = Lt * _mm(xb_op, tl.trans(dy_op), IEEE)  # [s, t] = M[t, s] x̄_s · dy_t
        dCBt += dCBt_h
        # a_r enters M[t, s] for s < r <= t: dL/da_r sums Z = dL/dM ∘ M over those (s, t), no cancellation
        Z = dCBt_h * CBt
        da = tl.sum(tl.where(causal, tl.cumsum(Z, axis=0) - Z, 0.0), axis=1)  # row r: Σ_{s < r}, t >= r
        # step 4 backwards: the entering state, read out by C_t, decayed by from_start[t] (a_r for r <= t)
        S_prev = tl.load(st_ptr + s_offs, mask=st_mask, other=0.0)  # (BLOCK_P, N)
        from_start = tl.exp2(a_cum)  # (Q,)
        y_off = _mm(Cc, tl.trans(S_prev), IEEE) * from_start[:, None]  # (Q, BLOCK_P)
        dC = _mma((dy * from_start[:, None]).to(dot_t), S_prev, dC, IEEE)  # (Q, N)
        da += tl.cumsum(tl.sum(dy * y_off, axis=1), axis=0, reverse=True)
    if IN:
        dxb = _mm(Wt, dy_op, IEEE)  # dL/dX̄ (Q, BLOCK_P), diagonal part
        # step 2 backwards: X̄_s reaches the state leaving the chunk decayed by to_end[s] (a_r for r > s)
        dS = tl.load(dst_ptr + s_offs, mask=st_mask, other=0.0)  # (BLOCK_P, N)
        to_end = tl.exp2(a_end - a_cum)  # (Q,)
        bds = _mm(Bc, tl.trans(dS), IEEE)  # B dSᵀ (Q, BLOCK_P)
        dxb_s = bds * to_end[:, None]
        dB = _mma((xf * (dt * to_end)[:, None]).to(dot_t), dS, dB, IEEE)  # (Q, N)
        col = tl.sum(xb * dxb_s, axis=1)  # (Q,)
        da += tl.cumsum(col, axis=0) - col  # Σ_{s < r}
        # step 3 backwards: S_k = exp(α_k) S_prev + ..., and every a_r of the chunk is in α_k
        if pb == 0:  # exp(α_k) <dS, S_prev>, from the reverse walk: its blocks of P summed here
            for w in range(0, n_walk):
                da += tl.load(g_ptr + (bc * H + h) * n_walk + w)
        if DXB_APART:  # no addition for Triton to fold into dxb's product: B dSᵀ feeds no product (see above)
            dxb = tl.fma(bds, to_end[:, None], dxb)
        else:
            dxb += dxb_s  # compiled as the accumulator of dxb's product (Triton folds the addition into it)
        if not DDT_DECAY_ONLY:  # Δ's part as the input's weight (X̄ = Δ x)
            ddt = tl.sum(xf * dxb, axis=1)
        dx = dxb * dt[:, None]
        if HAS_D:
            dx += dy * Dh
            tl.store(dD_ptr + ((bi * n_chunks + c) * H + h) * P + p, tl.sum(dy * xf, axis=0), mask=p_ok)
        tl.store(dx_ptr + x_offs, dx.to(dx_ptr.dtype.element_ty), mask=mask_x)
    ddt += A * da  # dL/dΔ
    if DT_SOFTPLUS:
        ddt = tl.where(raw > 20.0, ddt, ddt * tl.sigmoid(raw))
    tl.store(ddt_ptr + pb * ddt_part + row0 * H + h + q * H, ddt, mask=t_ok)
    tl.store(dA_ptr + part_offs * H + h, tl.sum(dt * da, axis=0))
    return dCBt, dB, dC


@triton.jit
def _chunk_bc_store(dB_ptr, dC_ptr, G, N, n_parts, part0, part, g, n, row, mask_bc, Bc, Cc, dCBt, dB, dC,
                    OUT: tl.constexpr, IEEE: tl.constexpr):
    """Store the chunk's parts of dB and dC, C Bᵀ's gradient (summed over its heads) added first."""
    offs = ((row[:, None] * n_parts + part0 + part) * G + g) * N + n[None, :]  # (b, L, n_parts, G, N)
    if OUT:  # C Bᵀ's gradient, summed over the heads: dB_s += Σ_t dCBt[s, t] C_t, dC_t += Σ_s dCBt[s, t] B_s
        dB = _mma(dCBt.to(Bc.dtype), Cc, dB, IEEE)
        dC = _mma(tl.trans(dCBt).to(Bc.dtype), Bc, dC, IEEE)
        tl.store(dC_ptr + offs, dC, mask=mask_bc)
    tl.store(dB_ptr + offs, dB, mask=mask_bc)


@triton.jit
def _ssd_bwd_chunk(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dout_ptr, dt_bias_ptr, st_ptr, dst_ptr,
    dx_ptr, ddt_ptr, dA_ptr, dD_ptr, dB_ptr, dC_ptr, g_ptr,
    L, H, G, P, N, n_chunks, heads_per_split, part0, n_parts, pb0, n_walk,
    SIDE: tl.constexpr, HAS_D: tl.constexpr, D_PER_DIM: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, DDT_DECAY_ONLY: tl.constexpr = False,
    CHUNKS: tl.constexpr = 1, DXB_APART: tl.constexpr = False,
):
    """One chunk of one group, the heads of one split in turn: every gradient but the states'.
    With CHUNKS > 1 (one head per split, heads_per_split = 1): CHUNKS chunks in turn, of that head.

    SIDE 1, the output side (reads the entering states S_prev): dC, and C Bᵀ's gradient; SIDE 2, the
    input side (reads the leaving states' gradients dS): dx, dD, dB; SIDE 0 both.
    Each writes its part of dL/dΔ and dL/dA (summed by the launcher); the part of dL/dα that needs both
    S_prev and dS comes from the reverse walk, in g (b c, H, n_walk), one part per block of the walk's P.
    Parts, one buffer for both sides: rows of n_parts parts (b, L, n_parts, G, N), dB's part of this
    program at part0 + split * n_pb + pb from dB_ptr; dC's, the output side's alone, at the same offset
    from dC_ptr, the first part after dB's (part0 = 0 there: the output side launches first). ddt
    (n_blocks, b, L, H) and dA (n_blocks, b c, H): this launch's blocks of head dims at pb0 + pb.
    (Q, Q) tiles are transposed, [s, t]: s the input step, t the output step (t >= s).
    The program's first axis is batch x chunk, or with CHUNKS > 1 batch x runs of CHUNKS chunks; the
    per-head work (``_chunk_head``) is the same. Why runs: a loop over one head has one iteration, so
    nothing overlaps a program's loads with its products; a loop over chunks is software-pipelined
    (num_stages), the next chunk's tiles loading while this one computes.
    """
    OUT: tl.constexpr = SIDE != 2
    IN: tl.constexpr = SIDE != 1
    # this launch's blocks of ddt and dA, first of all (compiled for sm_90 the output side then spills 28/24
    # bytes; 48/36 with pb0 + pb in the offsets below, 44/32 with the pointers moved there)
    if CHUNKS == 1:
        n_bc = tl.num_programs(0)  # batch * chunks
        n_b = tl.num_programs(0) // n_chunks
    else:
        n_b = tl.num_programs(0) // tl.cdiv(n_chunks, CHUNKS)
        n_bc = n_b * n_chunks
    ddt_ptr += pb0 * n_b.to(tl.int64) * L * H
    dA_ptr += pb0 * n_bc * H
    pid = tl.program_id(0)  # batch * n_chunks + chunk; with CHUNKS > 1, batch * runs + run
    g = tl.program_id(1)
    part = tl.program_id(2)  # split * (blocks of head dims) + block
    n_pb = tl.cdiv(P, BLOCK_P)
    split = part // n_pb
    pb = part % n_pb
    q = tl.arange(0, BLOCK_Q)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    p_ok = p < P
    last = q == BLOCK_Q - 1
    causal = q[None, :] >= q[:, None]  # [s, t]: t >= s
    # one block of head dims' part of ddt, (b, L, H): b L H in int64; L H (b c) in int32 overflowed past
    # 2^31 (float32 at L = 65536, H = 24: Q = 32, 2048 chunks) and wrote far outside ddt
    ddt_part = n_b.to(tl.int64) * L * H
    HG = H // G
    h_first = g * HG + split * heads_per_split
    if CHUNKS == 1:
        bi = pid // n_chunks
        c = pid % n_chunks
        t_ok, row, row0, mask_bc, mask_x, st_mask, x_tile, st_tile, Bc, Cc, CBt = _chunk_start(
            B_ptr, C_ptr, L, H, G, P, N, bi, c, g, q, p, n, p_ok, IEEE, BLOCK_Q)
        part_offs = pb * n_bc + pid  # this block of head dims' (b, c) slot of dA
        dCBt = tl.zeros([BLOCK_Q, BLOCK_Q], dtype=tl.float32)  # Σ over the heads of dL/d(C Bᵀ), transposed
        dB = tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32)
        dC = tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32)
        for h in range(h_first, h_first + tl.minimum(heads_per_split, HG - split * heads_per_split)):
            dCBt, dB, dC = _chunk_head(
                x_ptr, dt_ptr, A_ptr, D_ptr, z_ptr, dout_ptr, dt_bias_ptr, st_ptr, dst_ptr, dx_ptr, ddt_ptr, dA_ptr,
                dD_ptr, g_ptr, H, P, N, n_chunks, n_walk, h, bi, c, pid, pb, row0, part_offs, ddt_part,
                q, p, p_ok, t_ok, last, causal, mask_x, st_mask, x_tile, st_tile, Bc, Cc, CBt, dCBt, dB, dC,
                OUT, IN, HAS_D, D_PER_DIM, HAS_Z, HAS_DT_BIAS, DT_SOFTPLUS, IEEE, BLOCK_Q, DDT_DECAY_ONLY, DXB_APART)
        _chunk_bc_store(dB_ptr, dC_ptr, G, N, n_parts, part0, part, g, n, row, mask_bc, Bc, Cc, dCBt, dB, dC,
                        OUT, IEEE)
    else:
        n_runs = tl.cdiv(n_chunks, CHUNKS)
        bi = pid // n_runs
        c0 = (pid % n_runs) * CHUNKS
        for c in range(c0, tl.minimum(c0 + CHUNKS, n_chunks)):  # the loop the compiler pipelines
            t_ok, row, row0, mask_bc, mask_x, st_mask, x_tile, st_tile, Bc, Cc, CBt = _chunk_start(
                B_ptr, C_ptr, L, H, G, P, N, bi, c, g, q, p, n, p_ok, IEEE, BLOCK_Q)
            bc = bi * n_chunks + c
            dCBt, dB, dC = _chunk_head(
                x_ptr, dt_ptr, A_ptr, D_ptr, z_ptr, dout_ptr, dt_bias_ptr, st_ptr, dst_ptr, dx_ptr, ddt_ptr, dA_ptr,
                dD_ptr, g_ptr, H, P, N, n_chunks, n_walk, h_first, bi, c, bc, pb, row0, pb * n_bc + bc, ddt_part,
                q, p, p_ok, t_ok, last, causal, mask_x, st_mask, x_tile, st_tile, Bc, Cc, CBt,
                tl.zeros([BLOCK_Q, BLOCK_Q], dtype=tl.float32), tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32),
                tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32),
                OUT, IN, HAS_D, D_PER_DIM, HAS_Z, HAS_DT_BIAS, DT_SOFTPLUS, IEEE, BLOCK_Q, DDT_DECAY_ONLY, DXB_APART)
            _chunk_bc_store(dB_ptr, dC_ptr, G, N, n_parts, part0, part, g, n, row, mask_bc, Bc, Cc, dCBt, dB,
                            dC, OUT, IEEE)


# Runs of chunks per program (``_chunks_per_program``) as ssd_bwd's automatic choice where a program has one head.
# Measured on an H100 (torch 2.11, Triton 3.6; benchmarks/sweep_ssd.py's "one head" entries, the two sides of the
# chunk kernel at B4 L4096 H = G = 32 P64 N128 bf16): one chunk a program 1700 us; runs of 2, 4, 8: 1493, 1531,
# 1553 us; 8 with 3 stages 1482 us; the launcher's choice (8) 1549 us: about 9% less, where the offline compile
# predicted 1050-1300 us. tests/test_ssd_bwd_chunks.py passed there.
CHUNK_RUNS = True
INPUT_SIDE_P = 64  # the chunk kernel's input side, P block where a program has several heads (ssd_bwd)
# The input side's two parts of dL/dX̄ joined by an FMA (``_chunk_head``'s DXB_APART), wherever it runs. Offline
# sm_90 compile at B4 L4096 H128 P64 N128 G1 bf16 (P blocks of 64, 8 warps, 2 stages; Triton 3.7.1): 124/104 bytes
# of spill and 17 LDL in the head loop (1112 instructions, 24 HGMMA) become 32/24 bytes, none in the loop (1023, 16
# HGMMA). Not timed on a GPU yet: off until then (benchmarks/sweep_ssd.py, "dxb apart" entries).
INPUT_SIDE_DXB_APART = False


def _chunks_per_program(programs, n_chunks, sms):
    """Chunks per program of the chunk kernel where each program has one head; ``programs`` (b G splits P
    blocks) times the chunks is the one-chunk grid. The most of 8, 4, 2 that leaves at least 4 programs per SM
    (the kernel runs one program per SM: with 4 waves or more the last, partial one idles the GPU for at most
    a fifth of the launch), else 1. At Mamba-3's path shape (B4 L4096 H = G = 32, 64 chunks, 132 SMs): 8, i.e.
    1024 programs on the output side and 2048 on the input side (8192 and 16384 with one chunk each).
    Compiled for sm_90 (``benchmarks/sweep_ssd.py --compile-one-head``) the run length changes nothing but the
    loop's bound; float32 products spill kilobytes in the loop, so they keep one chunk."""
    for k in (8, 4, 2):
        if programs * triton.cdiv(n_chunks, k) >= 4 * sms:
            return k
    return 1


def _bwd_q_max(ieee, BLOCK_N):
    """The backward's longest chunk. Registers of the chunk kernel (offline sm_90 compile): float32 products
    and N = 256 take Q <= 32."""
    return 32 if (ieee or BLOCK_N > 128) and not interpreting() else 64


def bwd_chunk_len(chunk_size, dtype, N):
    """Q, the chunk length ``ssd_bwd`` uses for x of this dtype and a state of size N."""
    return min(max(next_pow2(chunk_size), 16), _bwd_q_max(dtype == torch.float32, max(16, next_pow2(N))))


def ssd_bwd(dy, dhT, x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
            initial_states=None, y_pre=None, block_q=None, block_p=None, n_split=None, chunks_per_program=None,
            sides=None, num_warps=None, num_stages=None, stop_after=None, ddt_decay_only=False, turns=False,
            dxb_apart=None):
    """Gradients of ``ssd_fwd``'s y (and final state) with respect to every input.

    dy (b, L, H, P) and dhT (b, H, P, N) (either may be None) -> a dict with dx, ddt, dA, dB, dC, and dD, dz,
    ddt_bias, dinitial_states when those inputs are given, each in its input's dtype. With z, y_pre is
    the forward's output before the gate (``ssd_fwd(..., return_pre_gate=True)``; recomputed if None).
    The keyword arguments after it override the launch parameters (benchmarks and tests only):
    ``sides`` "split" runs the chunk kernel's output and input sides as two launches, "fused" as one;
    ``chunks_per_program`` (where a program of the chunk kernel has one head, heads_per_split = 1, as on
    Mamba-3's path where G = H): each program walks that many chunks of its head in turn, so that the
    compiler pipelines their loads (None: ``_chunks_per_program`` picks when ``CHUNK_RUNS`` is on; 1 where a
    program has several heads, and for float32); ``stop_after`` ("states", "dstates", "side1" or "side2") returns None after that launch
    (to time the kernels); ``dxb_apart`` the input side's ``DXB_APART`` (None: ``INPUT_SIDE_DXB_APART``).
    ``ddt_decay_only``: ddt holds Δ's part through the decays alone, not its part as the input's
    weight (Mamba-3's path through these kernels accounts for that part itself; see kernels/mamba3_ssd.py).
    ``turns`` (Mamba-3's path, where B and C are keys and queries turned pair by pair): the dict also holds
    "turns", (b, H, n_chunks, N/2) float32: -<dS_k, J S_k> per pair (2i, 2i + 1) of the N axis, summed
    over P, for S_k the state entering chunk k (S_0 the initial state) and dS_k its gradient, J(e, o) =
    (-o, e); "chunk", Q; and in place of dB, dC their float32 parts "dB_parts", "dC_parts", unsummed:
    (b, L, parts, G, N) views of one buffer, the gradients being their sums over axis 2 (the rotation's
    backward sums them as it reads them). Turning every key and query from
    chunk k on by one angle turns S_k by minus that angle and the final state by plus it, so the loss's
    derivative in that angle is "turns" + <dhT, J hT> (see kernels/mamba3_ssd.py).
    """
    given = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states)
    knobs = dict(block_q=block_q, block_p=block_p, n_split=n_split, chunks_per_program=chunks_per_program,
                 sides=sides, num_warps=num_warps, num_stages=num_stages, stop_after=stop_after, dxb_apart=dxb_apart)
    if interpreting() and any(t is not None and t.dtype != torch.float32 for t in (dy, dhT, *given.values())):
        f = lambda t: None if t is None else t.float()  # noqa: E731  (the interpreter computes in float32 only)
        grads = ssd_bwd(f(dy), f(dhT), chunk_size=chunk_size, dt_softplus=dt_softplus, y_pre=f(y_pre),
                        **{k: f(t) for k, t in given.items()}, **knobs, ddt_decay_only=ddt_decay_only, turns=turns)
        keep = ("turns", "chunk", "dB_parts", "dC_parts") if turns else ()  # float32, or not a tensor
        return None if grads is None else {k: v if k in keep else v.to(given[k[1:]].dtype) for k, v in grads.items()}
    b, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    dtypes = {k: t.dtype for k, t in given.items() if t is not None}
    if z is not None and y_pre is None:
        y_pre = ssd_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states,
                        return_pre_gate=True)[2]
    x, dt, A = x.contiguous(), dt.contiguous(), A.contiguous()
    B, C = B.to(x.dtype).contiguous(), C.to(x.dtype).contiguous()
    dy = torch.zeros_like(x) if dy is None else dy.to(x.dtype).contiguous()
    ieee = x.dtype == torch.float32
    BLOCK_N = max(16, next_pow2(N))
    BLOCK_P = max(16, next_pow2(P))
    q_max = _bwd_q_max(ieee, BLOCK_N)
    Q = block_q or min(max(next_pow2(chunk_size), 16), q_max)
    n_chunks = triton.cdiv(L, Q)
    dev = x.device
    sides = sides or "split"
    side_ids = (1, 2) if sides == "split" else (0,)
    # blocks of head dims per side (registers: the input side, and the output side with z, take 32)
    if block_p:
        side_p = {i: block_p for i in side_ids}
    elif q_max == 32:
        side_p = {i: 16 for i in side_ids}
    else:
        side_p = {0: min(BLOCK_P, 32), 1: min(BLOCK_P, 32 if z is not None else 64), 2: min(BLOCK_P, 32)}
    n_pb = {i: triton.cdiv(P, side_p[i]) for i in side_ids}
    if interpreting():
        walk_p, extra, n_split = min(BLOCK_P, 32), {}, n_split or 1
    else:
        sms = _num_sms(dev)
        walk_p = 64 if BLOCK_P >= 64 and b * H >= 2 * sms else min(BLOCK_P, 32)
        if ieee:  # float32 products are FMA loops: smaller tiles (offline sm_90 compile)
            walk_p = min(walk_p, 16 if BLOCK_N > 128 else 32)
        extra = dict(num_warps=4, num_stages=2)
        if n_split is None:  # enough programs of the chunk kernel to fill the GPU twice
            n_split = max(1, min(H // G, triton.cdiv(2 * sms, b * n_chunks * G * min(n_pb.values()))))
    HG = H // G
    n_split = min(n_split, HG)
    heads_per_split = triton.cdiv(HG, n_split)
    n_split = triton.cdiv(HG, heads_per_split)  # no empty split
    if not block_p and q_max == 64 and heads_per_split > 1 and 2 in side_p and not interpreting():
        # the input side on whole heads of 64 where a program walks several heads (SSD's G < H): it spills (offline
        # sm_90 compile) but measured faster on an H100 (benchmarks/sweep_ssd.py, "P blocks of 64"; torch 2.11,
        # Triton 3.6): fwd+bwd at B4 L4096 H128 P64 N128 G1 bf16 3878 us against 4482 us with blocks of 32. Not
        # timed where a program has one head (Mamba-3's path, tuned with runs of chunks at 32): kept there.
        side_p[2] = min(BLOCK_P, INPUT_SIDE_P)
        n_pb[2] = triton.cdiv(P, side_p[2])
    if chunks_per_program is None:  # runs of chunks where a program has one head, half-precision products only
        one = not CHUNK_RUNS or heads_per_split > 1 or ieee or interpreting()
        chunks_per_program = 1 if one else _chunks_per_program(b * G * n_split * min(n_pb.values()), n_chunks, sms)
    elif chunks_per_program > 1 and heads_per_split > 1:
        raise ValueError(f"chunks_per_program={chunks_per_program} needs one head per program of the chunk "
                         f"kernel; got {heads_per_split} (pass n_split={HG})")
    n_runs = triton.cdiv(n_chunks, chunks_per_program)  # runs of chunks per batch row, one program each
    n_walk = triton.cdiv(P, walk_p)
    dxb_apart = INPUT_SIDE_DXB_APART if dxb_apart is None else bool(dxb_apart)

    # the states entering each chunk and the gradients of those leaving it: (b, c, H, P, N), x's dtype
    states = torch.empty(b, n_chunks, H, P, N, device=dev, dtype=x.dtype)
    dstates = torch.empty_like(states)
    f32 = dict(device=dev, dtype=torch.float32)
    dh0 = torch.empty(b, H, P, N, **f32) if initial_states is not None else states
    g_alpha = torch.empty(b, n_chunks, H, n_walk, **f32)  # exp(α_k) <dS_k, S_{k-1}>, per block of P
    turn = torch.empty(n_walk, b, H, n_chunks, N // 2, **f32) if turns else g_alpha  # -<dS_k, J S_k>, per block
    dummy = x
    bias_ = dummy if dt_bias is None else dt_bias.contiguous()
    z_ = dummy if z is None else z.contiguous()
    walk = dict(HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus), IEEE=ieee,
                BLOCK_Q=Q, BLOCK_P=walk_p, BLOCK_N=BLOCK_N, **extra)
    grid = (b * H, n_walk)
    _ssd_bwd_states[grid](
        x, dt, A, B, bias_, dummy if initial_states is None else initial_states.contiguous(), states,
        L, H, G, P, N, n_chunks, HAS_H0=initial_states is not None, **walk)
    if stop_after == "states":
        return None
    dz = torch.empty_like(x) if z is not None else dummy
    _ssd_bwd_dstates[grid](
        dy, z_, dummy if z is None else y_pre.to(x.dtype).contiguous(), dz, dt, A, C, bias_,
        dummy if dhT is None else dhT.contiguous(), states, dstates, dh0, g_alpha, turn,
        L, H, G, P, N, n_chunks, HAS_Z=z is not None, HAS_DHT=dhT is not None,
        STORE_DH0=initial_states is not None, TURN=bool(turns), **walk)
    if stop_after == "dstates":
        return None

    # The chunk kernel's float32 parts, one buffer for both sides: dB's parts (the output side's, then the
    # input side's) and after them dC's (the output side's), (b, L, parts, G, N); ddt (blocks, b, L, H) and dA
    # (blocks, b c, H). Each is summed below by one reduction over its parts, or none where it has one
    # (``sum_parts``: a view). At Mamba-3's path shape (B4 L4096 H32 P64 N128, G = H: 268 MB a part; three
    # of dB, one of dC) per-side buffers took dB = Σ_side part.sum(2) and dC.sum(2), four copying reductions
    # and two additions: 3.2 GB, 0.8 ms at 4 TB/s (one reduction of dB's three parts would still move 1.07
    # GB). There (``turns``) the parts go unsummed to the rotation's backward, which sums them as it reads them.
    dx = torch.empty_like(x)
    dD = torch.empty(b, n_chunks, H, P, **f32) if D is not None else dummy
    parts = {i: n_split * n_pb[i] for i in side_ids}
    n_dB = sum(parts.values())
    dBC = torch.empty(b, L, n_dB + parts[side_ids[0]], G, N, **f32)
    dB, dC = dBC[:, :, :n_dB], dBC[:, :, n_dB:]
    ddt = torch.empty(sum(n_pb.values()), b, L, H, **f32)
    dA = torch.empty(sum(n_pb.values()), b * n_chunks, H, **f32)
    # software pipelining of the head loop's loads (one program per SM: its latency is not hidden otherwise);
    # stages per side from the offline sm_90 compile: no spills at 2 (input side), 28 bytes at 3 (output side)
    stages = {0: 2, 1: 3, 2: 2} if num_stages is None else {i: num_stages for i in (0, 1, 2)}
    # this side's first part of dB, first block of ddt and dA: 0 for the output side, which launches first
    # (side_ids), as dC's offsets, the same as dB's from dC's first part, need
    part0 = pb0 = 0
    for side in side_ids:
        chunk_extra = {} if interpreting() else dict(num_warps=num_warps or 8, num_stages=stages[side])
        _ssd_bwd_chunk[(b * n_runs, G, parts[side])](
            x, dt, A, B, C, dummy if D is None else D.contiguous(), z_, dy, bias_, states, dstates,
            dx, ddt, dA, dD, dB, dC, g_alpha,
            L, H, G, P, N, n_chunks, heads_per_split, part0, dBC.shape[2], pb0, n_walk,
            SIDE=side, HAS_D=D is not None, D_PER_DIM=D is not None and D.dim() == 2, HAS_Z=z is not None,
            HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=bool(dt_softplus), IEEE=ieee,
            BLOCK_Q=Q, BLOCK_P=side_p[side], BLOCK_N=BLOCK_N, DDT_DECAY_ONLY=bool(ddt_decay_only),
            CHUNKS=chunks_per_program, DXB_APART=side != 1 and dxb_apart, **chunk_extra)
        if stop_after == f"side{side}":
            return None
        part0, pb0 = part0 + parts[side], pb0 + n_pb[side]

    ddt = sum_parts(ddt, 0)
    out = dict(dx=dx, ddt=ddt.to(dtypes["dt"]), dA=dA.sum((0, 1)).to(dtypes["A"]))
    if turns:
        out.update(dB_parts=dB, dC_parts=dC, turns=sum_parts(turn, 0), chunk=Q)
    else:
        out.update(dB=sum_parts(dB, 2).to(dtypes["B"]), dC=sum_parts(dC, 2).to(dtypes["C"]))
    if D is not None:
        out["dD"] = dD.sum((0, 1) if D.dim() == 2 else (0, 1, 3)).to(dtypes["D"])
    if z is not None:
        out["dz"] = dz.to(dtypes["z"])
    if dt_bias is not None:
        out["ddt_bias"] = ddt.sum((0, 1)).to(dtypes["dt_bias"])
    if initial_states is not None:
        out["dinitial_states"] = dh0.to(dtypes["initial_states"])
    return out

_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


class _SSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, chunk_size, dt_softplus, return_final_states, *tensors):
        kw = dict(zip(_NAMES, tensors))
        y, hT, y_pre = ssd_fwd(chunk_size=chunk_size, dt_softplus=dt_softplus,
                               return_final_states=return_final_states, return_pre_gate=True, **kw)
        ctx.save_for_backward(*tensors, y_pre if kw["z"] is not None else None)
        ctx.chunk_size, ctx.dt_softplus = chunk_size, dt_softplus
        ctx.set_materialize_grads(False)
        return (y, hT) if return_final_states else y

    @staticmethod
    def backward(ctx, gy, ghT=None):
        *tensors, y_pre = ctx.saved_tensors
        grads = ssd_bwd(gy, ghT, chunk_size=ctx.chunk_size, dt_softplus=ctx.dt_softplus, y_pre=y_pre,
                        **dict(zip(_NAMES, tensors)))
        needs = ctx.needs_input_grad[3:]
        return (None, None, None, *(grads.get(_GRAD[k]) if nd else None for k, nd in zip(_NAMES, needs)))


_GRAD = {"x": "dx", "dt": "ddt", "A": "dA", "B": "dB", "C": "dC", "D": "dD", "z": "dz", "dt_bias": "ddt_bias",
         "initial_states": "dinitial_states"}


def ssd_triton(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False,
               initial_states=None, return_final_states=False):
    """SSD in Triton (see the module docstring); differentiable in every tensor argument.

    Arguments as in ``ssm_edu.ssd``; x float32, bfloat16 or float16. Returns y
    (and the final state) in x's dtype.
    """
    tensors = (x, dt, A, B, C, D, z, dt_bias, initial_states)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _SSD.apply(chunk_size, bool(dt_softplus), bool(return_final_states), *tensors)
    y, hT = ssd_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, initial_states, return_final_states)
    return (y, hT) if return_final_states else y
