"""Triton selective scan (Mamba-1, chapter 7): forward and backward.

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t,    y_t = <h_t, C_t> + D x_t,  then y_t · silu(z_t)

Work split. One program per (batch element, group, block of BLOCK_D channels
of that group); a block never straddles two groups, so it reads one row of
B and C. The program walks L in blocks of BLOCK_L steps: it loads u, delta
(BLOCK_D, BLOCK_L) and B, C (N, BLOCK_L), forms the steps
(a, b) = (exp(Δ A), Δ B x), scans them along t with ``tl.associative_scan``
and the combine of chapter 6, (a, b) ∘ (a', b') = (a' a, a' b + b'), adds the
carried state, reduces over N against C and writes y. Two forms of the block
(the ``variant`` argument; both compute the same thing):

* ``"rows"`` (the default for N <= 32): tiles (N, BLOCK_D, BLOCK_L) with
  BLOCK_L = 4 steps (for N = 16), at most one memory vector. Triton spreads
  a load over threads along its contiguous axis (t) first and then along the
  axis before it (d); a block this short fits in one thread's vector, so
  each thread owns whole (N, BLOCK_L) slabs of its channels: the scan over
  t, the sum over n and the carry stay inside the thread (no shuffles). The
  carry enters through the block's first step, b_0 <- a_0 h + b_0, so only
  the b-part of the scan is used. The slab must fit in registers: N·BLOCK_L
  = 64 values per array does, 128 spills.
* ``"nloop"``: a loop over the N state modes (unrolled), each scanning a
  (BLOCK_D, BLOCK_L) tile and accumulating its share of y, the loop order of
  mamba_ssm's CUDA kernel. Tiles are wide in t, so the scan crosses threads.
  Training uses it (it saves the checkpoints for the backward pass), and so
  does N > 32.

Measured on an H100 (torch 2.11, Triton 3.6), batch 8, D = 2048, L = 2048,
N = 16, bfloat16 with D, z, delta_bias and softplus: "rows" 623 us, "nloop"
830-990 us (mamba_ssm's CUDA kernel: 532 us). The floor is 128 us (one exp2
per (b, d, t, n) at the H100's 4.2e12 per second), so Triton's per-element
overhead (the scan's combine, the masks) still dominates; forward plus
backward: 12.7 ms.

Where the state lives. The carry h (BLOCK_D, N) stays in registers, in
float32, for the whole sequence; the scanned block lives in registers while
the scan runs. Positions past L are loaded as the identity step (Δ = 0: a = 1,
b = 0), so any L works and the carry is the state at the last real step.

What moves through memory. u, delta, B, C, z are read once and y is written
once (plus the last state, (batch, D, N)); nothing of size
(batch, D, N, L) touches global memory. This makes the kernel compute bound:
for each (b, d, t, n) one exponential (exp2 with log2 e folded into A by the
launcher) and a handful of multiply-adds.

Backward. ``_selective_scan_bwd`` walks the blocks in reverse. For block k it
reloads the state at the block's start (the forward pass saved one
checkpoint (batch, D, N) per block when gradients are needed), recomputes the
block's states h_t, and runs the adjoint recurrence backwards with
``tl.associative_scan(reverse=True)``:

    g_t = C_t · gy_t + exp(Δ_{t+1} A) g_{t+1}       (g = dLoss/dh, gy = dLoss/dy before the gate)

Then dB_t = Σ_d g_t Δ_t x_t, dC_t = Σ_d gy_t h_t, d(Δx)_t = <g_t, B_t>, and
d(Δ_t A) = g_t ⊙ (h_t - Δ_t B_t x_t) (= g_t ⊙ a_t h_{t-1}), which gives dA and
dΔ. Sums over channels (dB, dC) are written per program and summed by the
launcher; sums over time (dA, dD, d delta_bias) accumulate in registers.

Precision. Inputs float32, bfloat16 or float16 (mixed is fine: A, D and
delta_bias are usually float32); all arithmetic in float32. In Triton's CPU
interpreter, half-precision arithmetic is not supported: the launcher casts
to float32 there.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._launch import interpreting, next_pow2

__all__ = ["selective_scan_triton", "selective_scan_fwd", "selective_scan_bwd"]

_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)
LOG2E = math.log2(math.e)
DEFAULT_VARIANT = "rows"  # forward only; training (checkpoints for the backward pass) uses "nloop"


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
def _selective_scan_fwd(
    u_ptr, delta_ptr, A2_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr, ck_ptr,
    L, Dg, N,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_CK: tl.constexpr, ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_d, g, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
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
    if ROWS:
        # Tiles (BLOCK_N, BLOCK_D, BLOCK_L). Triton lays a load out along its contiguous axis (t) and then
        # along the axis before it (d): with BLOCK_L one vector wide, each thread owns whole (N, BLOCK_L)
        # slabs of its channels, so the scan over t, the sum over n and the carry never leave the thread.
        d3 = d[None, :, None]
        t0 = cols[None, None, :]  # (1, 1, BLOCK_L)
        dm3 = d_ok[None, :, None]
        A2 = tl.load(A2_ptr + d3 * N + n[:, None, None], mask=dm3 & n_ok[:, None, None], other=0.0)  # (BLOCK_N, BLOCK_D, 1)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d3, mask=dm3, other=0.0).to(tl.float32)  # (1, BLOCK_D, 1)
        if HAS_D:
            Dv = tl.load(D_ptr + d3, mask=dm3, other=0.0).to(tl.float32)
        for start in range(0, L, BLOCK_L):
            if SAVE_CK:  # h_{start-1}, for the backward pass
                tl.store(ck_ptr + ck_nd + (start // BLOCK_L) * N, carry, mask=nd_ok)
            t3 = start + t0
            m3 = dm3 & (t3 < L)  # (1, BLOCK_D, BLOCK_L)
            u = tl.load(u_ptr + b64 * s_ub + d3 * s_ud + t3 * s_ul, mask=m3, other=0.0).to(tl.float32)
            dt = tl.load(delta_ptr + b64 * s_db + d3 * s_dd + t3 * s_dl, mask=m3, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt += bias
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = tl.where(m3, dt, 0.0)  # identity steps past L
            mn3 = n_ok[:, None, None] & (t3 < L)  # (BLOCK_N, 1, BLOCK_L)
            Bt = tl.load(B_ptr + n[:, None, None] * s_Bn + t3 * s_Bl, mask=mn3, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + n[:, None, None] * s_Cn + t3 * s_Cl, mask=mn3, other=0.0).to(tl.float32)
            a = tl.exp2(dt * A2)  # (BLOCK_N, BLOCK_D, BLOCK_L)
            bx = (dt * u) * Bt
            bx = tl.where(t0 == 0, a * carry[:, :, None] + bx, bx)  # the carry enters through the first step
            _, h = tl.associative_scan((a, bx), 2, _combine)
            y = tl.sum(h * Ct, axis=0, keep_dims=True)  # (1, BLOCK_D, BLOCK_L)
            carry = tl.sum(tl.where(t0 == BLOCK_L - 1, h, 0.0), axis=2)  # (BLOCK_N, BLOCK_D)
            if HAS_D:
                y += Dv * u
            if HAS_Z:
                z = tl.load(z_ptr + b64 * s_zb + d3 * s_zd + t3 * s_zl, mask=m3, other=0.0).to(tl.float32)
                y *= z * tl.sigmoid(z)
            tl.store(y_ptr + (b64 * Dtot + d3) * L + t3, y.to(y_ptr.dtype.element_ty), mask=m3)
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
    tl.store(last_ptr + state_nd, carry, mask=nd_ok)


@triton.jit
def _selective_scan_bwd(
    u_ptr, delta_ptr, A2_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, gy_ptr, glast_ptr, ck_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
    L, Dg, N,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_GLAST: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_d, g, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    G = tl.num_programs(1)
    Dtot = Dg * G
    dg = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = dg < Dg
    d = (g * Dg + dg).to(tl.int64)
    n = tl.arange(0, BLOCK_N)
    n_ok = n < N
    dn_ok = d_ok[:, None] & n_ok[None, :]
    cols = tl.arange(0, BLOCK_L)
    b64 = b.to(tl.int64)
    A2 = tl.load(A2_ptr + d[:, None] * N + n[None, :], mask=dn_ok, other=0.0)  # (BLOCK_D, BLOCK_N)
    A = A2 * 0.6931471805599453  # A = A2 ln 2
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=d_ok, other=0.0).to(tl.float32)
    B_ptr += b64 * s_Bb + g * s_Bg
    C_ptr += b64 * s_Cb + g * s_Cg
    # partial sums over this program's channels: dB, dC (batch, G, n_dblocks, N, L)
    part = ((b64 * G + g) * tl.num_programs(0) + pid_d) * N
    if HAS_GLAST:  # dLoss/dh_{L-1} enters the adjoint at the last step
        gcarry = tl.load(glast_ptr + (b64 * Dtot + d[:, None]) * N + n[None, :], mask=dn_ok, other=0.0)
    else:
        gcarry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)  # g at the first step of the next block
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    n_blocks = tl.cdiv(L, BLOCK_L)
    for kk in range(0, n_blocks):
        k = n_blocks - 1 - kk
        t = k * BLOCK_L + cols
        t_ok = t < L
        m = d_ok[:, None] & t_ok[None, :]
        udl = b64 * s_ub + d[:, None] * s_ud + t[None, :] * s_ul
        u = tl.load(u_ptr + udl, mask=m, other=0.0).to(tl.float32)
        dt, raw = _step(delta_ptr, bias, b64 * s_db + d[:, None] * s_dd + t[None, :] * s_dl, m, HAS_BIAS, SOFTPLUS)
        m_next = d_ok[:, None] & (t + 1 < L)[None, :]  # Δ_{t+1}: one step to the right
        dt_next, _ = _step(delta_ptr, bias, b64 * s_db + d[:, None] * s_dd + (t + 1)[None, :] * s_dl, m_next,
                           HAS_BIAS, SOFTPLUS)
        mnl = n_ok[:, None] & t_ok[None, :]
        Bt = tl.load(B_ptr + n[:, None] * s_Bn + t[None, :] * s_Bl, mask=mnl, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + n[:, None] * s_Cn + t[None, :] * s_Cl, mask=mnl, other=0.0).to(tl.float32)
        # recompute the block's states from its checkpoint
        h0 = tl.load(ck_ptr + ((b64 * Dtot + d[:, None]) * n_blocks + k) * N + n[None, :], mask=dn_ok, other=0.0)
        dtu = dt * u
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])  # (BLOCK_D, BLOCK_N, BLOCK_L)
        bx = dtu[:, None, :] * Bt[None, :, :]
        acum, hloc = tl.associative_scan((a, bx), 2, _combine)
        h = acum * h0[:, :, None] + hloc
        # the output's gradient before the gate
        gout = tl.load(gy_ptr + (b64 * Dtot + d[:, None]) * L + t[None, :], mask=m, other=0.0).to(tl.float32)
        if HAS_Z:
            ypre = tl.sum(h * Ct[None, :, :], axis=1)
            if HAS_D:
                ypre += Dv[:, None] * u
            z = tl.load(z_ptr + b64 * s_zb + d[:, None] * s_zd + t[None, :] * s_zl, mask=m, other=0.0).to(tl.float32)
            sz = tl.sigmoid(z)
            dz = gout * ypre * sz * (1.0 + z * (1.0 - sz))  # silu'(z) = σ(z)(1 + z(1 - σ(z)))
            tl.store(dz_ptr + (b64 * Dtot + d[:, None]) * L + t[None, :], dz, mask=m)
            gy = gout * z * sz
        else:
            gy = gout
        # adjoint: g_t = C_t gy_t + a_{t+1} g_{t+1}, a reverse scan; the carry is g at the next block's start
        a_next = tl.exp2(dt_next[:, None, :] * A2[:, :, None])
        pcum, gloc = tl.associative_scan((a_next, Ct[None, :, :] * gy[:, None, :]), 2, _combine, reverse=True)
        gh = pcum * gcarry[:, :, None] + gloc  # (BLOCK_D, BLOCK_N, BLOCK_L)
        gcarry = tl.sum(tl.where(cols[None, None, :] == 0, gh, 0.0), axis=2)
        tl.store(dB_ptr + (part + n[:, None]) * L + t[None, :], tl.sum(gh * dtu[:, None, :], axis=0), mask=mnl)
        tl.store(dC_ptr + (part + n[:, None]) * L + t[None, :], tl.sum(h * gy[:, None, :], axis=0), mask=mnl)
        ddtu = tl.sum(gh * Bt[None, :, :], axis=1)  # (BLOCK_D, BLOCK_L)
        dlog = gh * (h - bx)  # dLoss/d(Δ_t A) = g_t a_t h_{t-1}
        dA_acc += tl.sum(dlog * dt[:, None, :], axis=2)
        ddt = ddtu * u + tl.sum(dlog * A[:, :, None], axis=1)
        du = ddtu * dt
        if HAS_D:
            du += gy * Dv[:, None]
            dD_acc += tl.sum(gy * u, axis=1)
        if SOFTPLUS:
            ddt *= tl.sigmoid(raw)
        ddt = tl.where(m, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        tl.store(du_ptr + (b64 * Dtot + d[:, None]) * L + t[None, :], du, mask=m)
        tl.store(ddelta_ptr + (b64 * Dtot + d[:, None]) * L + t[None, :], ddt, mask=m)
    tl.store(dA_ptr + (b64 * Dtot + d[:, None]) * N + n[None, :], dA_acc, mask=dn_ok)
    tl.store(dD_ptr + b64 * Dtot + d, dD_acc, mask=d_ok)
    tl.store(dbias_ptr + b64 * Dtot + d, dbias_acc, mask=d_ok)


# ----------------------------------------------------------------------------- launchers


def _blocks(Dg, N, L, training, variant, block_d, block_l, num_warps, itemsize=2):
    """The forward pass's variant and block sizes (the backward pass reuses BLOCK_L: the checkpoint spacing)."""
    BN = next_pow2(N)
    if interpreting():  # small: the interpreter's scan is a Python loop per element
        meta = dict(BLOCK_D=block_d or min(next_pow2(Dg), 4), BLOCK_N=BN, BLOCK_L=block_l or min(next_pow2(L), 8))
        return variant, meta, {}
    if training:  # the backward kernel's tiles (BLOCK_D, N, BLOCK_L) stay near 4096 elements
        variant = "nloop"
        block_l = block_l or max(16, min(next_pow2(L), 4096 // (4 * BN)))
    if variant == "rows" and block_l is None and BN > 32:  # a thread's slab (N, BLOCK_L) would not fit in registers
        variant = "nloop"
    if variant == "rows":
        # Measured on an H100 (N = 16, bfloat16): 4 steps x 16 modes per thread, 128 channels per program
        # use 194 registers without spilling; 8 steps spill and run 7x slower.
        w = num_warps or 4
        bl = block_l or max(1, min(16 // itemsize, 64 // BN))
        return variant, dict(BLOCK_D=block_d or 32 * w, BLOCK_N=BN, BLOCK_L=bl), dict(num_warps=w)
    bd = block_d or min(next_pow2(Dg), 32)
    bl = block_l or min(next_pow2(L), 64)
    return variant, dict(BLOCK_D=bd, BLOCK_N=BN, BLOCK_L=bl), dict(num_warps=num_warps or 4)


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
                       save_checkpoints=False, variant=None, block_d=None, block_l=None, num_warps=None):
    """Launch the forward kernel -> (y, last_state, checkpoints, meta).

    y (b, D, L) in u's dtype; last_state (b, D, N) float32; checkpoints
    (b, D, n_blocks, N) float32, the states at each block's start (with
    ``save_checkpoints``, else None); meta, the block sizes (the backward pass
    must use the same BLOCK_L).
    The keyword arguments after ``save_checkpoints`` pick the variant and the
    block sizes (benchmarks).
    """
    out_dtype = u.dtype
    if interpreting():
        u, delta, A, B, C, D, z, delta_bias = _interpreter_float32(u, delta, A, B, C, D, z, delta_bias)
    batch, Dtot, L = u.shape
    N = A.shape[1]
    has_d, has_bias = D is not None, delta_bias is not None
    Bv, Cv, G, A2, D, delta_bias, strides = _prepare(u, delta, A, B, C, D, z, delta_bias)
    Dg = Dtot // G
    variant = variant or DEFAULT_VARIANT
    variant, meta, extra = _blocks(Dg, N, L, save_checkpoints, variant, block_d, block_l, num_warps, u.element_size())
    y = torch.empty(batch, Dtot, L, device=u.device, dtype=u.dtype)
    last = torch.empty(batch, Dtot, N, device=u.device, dtype=torch.float32)
    n_blocks = triton.cdiv(L, meta["BLOCK_L"])
    ck = torch.empty(batch, Dtot, n_blocks, N, device=u.device, dtype=torch.float32) if save_checkpoints else last
    grid = (triton.cdiv(Dg, meta["BLOCK_D"]), G, batch)
    dummy = A2
    _selective_scan_fwd[grid](
        u, delta, A2, Bv, Cv, D, dummy if z is None else z, delta_bias, y, last, ck, L, Dg, N, *strides,
        HAS_D=has_d, HAS_Z=z is not None, HAS_BIAS=has_bias, SOFTPLUS=bool(delta_softplus),
        SAVE_CK=save_checkpoints, ROWS=(variant == "rows" and not save_checkpoints), **meta, **extra)
    return y.to(out_dtype), last, (ck if save_checkpoints else None), meta


def selective_scan_bwd(gy, glast, ck, meta, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False):
    """Launch the backward kernel -> gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), float32.

    gy (b, D, L) is dLoss/dy, glast (b, D, N) or None is dLoss/d last_state;
    ck and meta come from ``selective_scan_fwd(save_checkpoints=True)``.
    """
    if interpreting():
        u, delta, A, B, C, D, z, delta_bias, gy = _interpreter_float32(u, delta, A, B, C, D, z, delta_bias, gy)
    batch, Dtot, L = u.shape
    N = A.shape[1]
    has_d, has_bias = D is not None, delta_bias is not None
    Bv, Cv, G, A2, Dc, biasc, strides = _prepare(u, delta, A, B, C, D, z, delta_bias)
    Dg = Dtot // G
    meta = dict(meta, BLOCK_D=min(next_pow2(Dg), 4))  # the backward's own channel blocks; BLOCK_L is the checkpoints'
    n_dblocks = triton.cdiv(Dg, meta["BLOCK_D"])
    f32 = dict(device=u.device, dtype=torch.float32)
    du, ddelta = torch.empty(batch, Dtot, L, **f32), torch.empty(batch, Dtot, L, **f32)
    dz = torch.empty(batch, Dtot, L, **f32) if z is not None else None
    dB_part = torch.empty(batch, G, n_dblocks, N, L, **f32)
    dC_part = torch.empty(batch, G, n_dblocks, N, L, **f32)
    dA_part = torch.empty(batch, Dtot, N, **f32)  # sums over time, per batch element
    dD_part, dbias_part = torch.empty(batch, Dtot, **f32), torch.empty(batch, Dtot, **f32)
    gy = gy.contiguous()
    glast = glast.float().contiguous() if glast is not None else None
    dummy = A2
    extra = {} if interpreting() else dict(num_warps=8)
    grid = (n_dblocks, G, batch)
    _selective_scan_bwd[grid](
        u, delta, A2, Bv, Cv, Dc, dummy if z is None else z, biasc, gy, dummy if glast is None else glast, ck,
        du, ddelta, dummy if dz is None else dz, dB_part, dC_part, dA_part, dD_part, dbias_part,
        L, Dg, N, *strides,
        HAS_D=has_d, HAS_Z=z is not None, HAS_BIAS=has_bias, SOFTPLUS=bool(delta_softplus),
        HAS_GLAST=glast is not None, **meta, **extra)
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
