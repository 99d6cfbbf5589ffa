"""Triton Mamba-3 backward pass (chapter 9): the gradients of every input, in two kernels.

Notation of ``kernels/mamba3.py``: per chunk c, rows i, j (tokens x ranks), a⁺ the running log2
decay, E_i = exp2(a⁺_i), U_j = exp2(a⁺_end - a⁺_j) w_j (the weight of row j in the state the chunk
hands on), W = decay ∘ weights (the mask inside the chunk), s = q̂ k̂ᵀ, S_c the state entering the
chunk (saved by the forward pass) and dS_{c+1} the gradient of the state leaving it. With dy the
gradient of the SSM output (the gate's derivative applied):

    dS_c = exp2(a⁺_end) dS_{c+1} + (E ∘ q̂)ᵀ dy                     (the reverse recurrence)
    dx   = (W ∘ s)ᵀ dy + U ∘ (k̂ dS_{c+1}ᵀ) + D dy
    dq̂   = (W ∘ dy xᵀ) k̂ + E ∘ (dy S_c)
    dk̂   = (W ∘ dy xᵀ)ᵀ q̂ + U ∘ (x dS_{c+1})

and for the scalars, with ds = (dy xᵀ) ∘ s on and below the diagonal: dγ_j = Σ_{same token} ds_ij,
dw_j = Σ_{i below} ds_ij decay_ij + exp2(a⁺_end - a⁺_j) x_j·(dS_{c+1} k̂_j), and the gradient of the
running decays dV_i = Σ_j ds_ij W_ij - Σ_j ds_ji W_ji + dy_i·(E_i q̂_i S_c) - U_i x_i·(dS_{c+1} k̂_i),
summed from the chunk's end (a reverse cumsum) plus the whole chunk's share
exp2(a⁺_end) ⟨dS_{c+1}, S_c⟩ + Σ_j U_j x_j·(dS_{c+1} k̂_j): that is da_t for a_t = Δ_t A_t.

The rotation. A pair (u, v) turned by φ has d/dφ = (-v', u'), so dΦ = k̂_e dk̂_o - k̂_o dk̂_e (and the
same for q̂). The angles are running sums, so dθ_t = Δ_t Σ_{s>=t} dΦ_s: a reverse cumsum over the
whole sequence, which would tie the chunks together again. It does not, because the model only sees
differences of angles: turning every angle from the start of chunk c+1 on by ε changes nothing but
the pairing of the later queries with the state S_{c+1} that enters there (as if S_{c+1} were turned
by ε, S J per pair), the final state (turned back by -ε) and the final angle (+ε). So

    Σ_{s in chunks > c} dΦ_s + dΦ_T = ⟨dS_{c+1}, S_{c+1} J⟩ - ⟨dh_T, h_T J⟩ + dΦ_T,
    ⟨dS, S J⟩ = Σ_p dS_{p,2i} S_{p,2i+1} - dS_{p,2i+1} S_{p,2i}   (one number per pair i),

and every chunk gets its carry from the saved states and the state gradients, independently.

Work split.

1. ``_mamba3_bwd_state``: one program per (batch, head, block of BLOCK_P rows of the state), the
   reverse recurrence from the last chunk to the first with dS (hᵀ layout, even and odd rows,
   float32) in registers: it rotates C (q̂ only), stores dS_{c+1} for every chunk, and the two
   numbers per chunk that need S next to dS: ⟨dS_{c+1}, S_c⟩ and ⟨dS_{c+1}, S_{c+1} J⟩ (per pair),
   as partial sums over its P rows. It ends with dh_{-1} and ⟨dS_0, S_0 J⟩.
2. ``_mamba3_bwd_chunk``: one program per (chunk, batch, block of heads of a group of B and C),
   independent of the others; it loads S_c and dS_{c+1}, recomputes the rotations, decays and
   masks, and computes everything above. Two launches of it (``SPLIT``), so that each holds about
   half the live tiles (both recompute the rotations and dy xᵀ; registers, not memory, were the
   limit: see benchmarks/notes/mamba3.md):
   PART 0: dq̂, dk̂ -> dB, dC (turned back by -Φ and added into (b, L, G, R, N) float32: atomically
   with one head per program, ``HEADS = 1``, or by read-modify-write when a program takes the
   whole group, ``heads=0``) and dΦ -> dθ and the angles' share of dΔ;
   PART 1: dx, dz, dD and the per-token gradients of the weights (dγ, dw per row) and of the decays
   (da), which go to small (b, L, H) buffers that the launcher turns into dΔ, dA and dλ (w_s
   reaches one step ahead, across chunk boundaries).

Traffic beyond the inputs and the gradients: the states S (saved by the forward pass) and dS, one
(P, N) matrix per (batch, head, chunk) each, in the products' dtype: S is written once and read by
all three launches, dS written once and read by the two chunk launches. Chunks of 32 rows in
training (``MAX_ROWS``); 64 would halve that traffic but spill registers.

Precision: as the forward pass (float32 everywhere; the products exact in float32 for float32
inputs, with operands in the input's dtype for bfloat16 / float16).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import interpreting, next_pow2
from .mamba3 import _angles, _dot, _pairs, _scalars, _turn, launch_config

__all__ = ["mamba3_bwd", "bwd_launch_config", "training_knobs"]

MAX_ROWS = 32  # rows per chunk in training (the forward pass saves a state per chunk of this length)
STATE_BLOCK_P = 16  # rows of the state per program of the reverse recurrence
STATE_WARPS = 4
CHUNK_WARPS = 8
HEADS = 1  # heads per program of the chunk kernel's dq̂, dk̂ launch (0: the whole group, dB and dC without atomics)
X_HEADS = 0  # heads per program of its dx launch (0: the whole group; it writes nothing shared)
SPLIT = True  # two launches of the chunk kernel: dq̂, dk̂ in one, dx and the scalars in the other
SHARED_KNOBS = ("lowp", "fast_trig", "f32_precision")  # knobs of the forward pass that the backward pass follows


@triton.jit
def _mamba3_bwd_state(
    dt_ptr, A_ptr, theta_ptr, C_ptr, z_ptr, gy_ptr, Sc_ptr, Pc_ptr, h0_ptr, hT_ptr, dhT_ptr,
    dSc_ptr, vend_ptr, carry_ptr, dh0_ptr, carry0_ptr,
    L, H, HPG, G, R, P, N2, n_chunks, n_pb,
    HAS_Z: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr, F32: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr,
    BLOCK_T: tl.constexpr, RP: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N2: tl.constexpr,
):
    # dt, A (b, L, H) float32; theta (b, L, H, N2) float32; C (b, L, G, R, 2 N2); z, gy (b, L, H, R, P);
    # Sc, dSc (b, H, n_chunks, P, 2 N2); Pc (b, H, n_chunks, N2); h0, hT, dhT, dh0 (b, H, P, 2 N2) float32;
    # vend (b, H, n_chunks, n_pb), carry (b, H, n_chunks, n_pb, N2), carry0 (b, H, n_pb, N2) float32.
    ROWS: tl.constexpr = BLOCK_T * RP
    OP = gy_ptr.dtype.element_ty
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = pid_bh // H
    h = pid_bh % H
    g = h // HPG
    N = 2 * N2
    bh = pid_bh.to(tl.int64)
    rows = tl.arange(0, ROWS)
    tok = rows // RP
    rank = rows % RP
    first = rank == 0
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N2)
    p_ok = p < P
    n_ok = n < N2
    st_mask = n_ok[:, None] & p_ok[None, :]
    st_off = p[None, :] * N + 2 * n[:, None]  # (BLOCK_N2, BLOCK_P): the even columns of a (P, N) state
    if HAS_DHT:  # dS = dh_T and the state it belongs to, h_T, entering the walk
        dS_e = tl.load(dhT_ptr + bh * P * N + st_off, mask=st_mask, other=0.0)
        dS_o = tl.load(dhT_ptr + bh * P * N + st_off + 1, mask=st_mask, other=0.0)
        Sn_e = tl.load(hT_ptr + bh * P * N + st_off, mask=st_mask, other=0.0)
        Sn_o = tl.load(hT_ptr + bh * P * N + st_off + 1, mask=st_mask, other=0.0)
    else:
        dS_e = tl.zeros([BLOCK_N2, BLOCK_P], dtype=tl.float32)
        dS_o = tl.zeros([BLOCK_N2, BLOCK_P], dtype=tl.float32)
        Sn_e = tl.zeros([BLOCK_N2, BLOCK_P], dtype=tl.float32)
        Sn_o = tl.zeros([BLOCK_N2, BLOCK_P], dtype=tl.float32)
    io = (bi.to(tl.int64) * L * H + h) * R * P
    sc = bi.to(tl.int64) * L * H + h
    dt_ptr += sc
    A_ptr += sc
    theta_ptr += sc * N2
    C_ptr += (bi.to(tl.int64) * L * G + g) * R * N

    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        t = c * BLOCK_T + tok
        t_ok = t < L
        row_ok = t_ok & (rank < R)
        so = (bh * n_chunks + c) * P * N
        tl.store(dSc_ptr + so + st_off, dS_e.to(dSc_ptr.dtype.element_ty), mask=st_mask)  # dS_{c+1}
        tl.store(dSc_ptr + so + st_off + 1, dS_o.to(dSc_ptr.dtype.element_ty), mask=st_mask)
        S_e = tl.load(Sc_ptr + so + st_off, mask=st_mask, other=0.0).to(tl.float32)  # S_c
        S_o = tl.load(Sc_ptr + so + st_off + 1, mask=st_mask, other=0.0).to(tl.float32)
        ci = bh * n_chunks + c
        tl.store(vend_ptr + ci * n_pb + pid_p, tl.sum(tl.sum(dS_e * S_e + dS_o * S_o, axis=1), axis=0))
        tl.store(carry_ptr + (ci * n_pb + pid_p) * N2 + n, tl.sum(dS_e * Sn_o - dS_o * Sn_e, axis=1), mask=n_ok)
        Sn_e = S_e
        Sn_o = S_o
        # dS_c = exp2(a⁺_end) dS_{c+1} + (E ∘ q̂)ᵀ dy
        dt = tl.load(dt_ptr + t * H, mask=t_ok, other=0.0)
        a = tl.where(first, tl.load(A_ptr + t * H, mask=t_ok, other=0.0) * dt * 1.4426950408889634, 0.0)
        a_cum = tl.cumsum(a, axis=0)
        psi = tl.load(Pc_ptr + ci * N2 + n, mask=n_ok, other=0.0)
        cos, sin, _th, _delta = _angles(theta_ptr, dt, psi, t, t_ok, first, n, n_ok, H, N2, FAST)
        src, rn_mask = _pairs(t, rank, row_ok, n, n_ok, G, R, N2)
        q_e, q_o = _turn(C_ptr, src, rn_mask, cos, sin)
        xo = (t * (H * R * P) + rank * P)[:, None] + p[None, :]
        rp_mask = row_ok[:, None] & p_ok[None, :]
        dy = tl.load(gy_ptr + io + xo, mask=rp_mask, other=0.0).to(tl.float32)
        if HAS_Z:
            zv = tl.load(z_ptr + io + xo, mask=rp_mask, other=0.0).to(tl.float32)
            dy = dy * zv * tl.sigmoid(zv)
        E = tl.exp2(a_cum)
        keep = tl.exp2(tl.sum(a, axis=0))
        dS_e = _dot(tl.trans(q_e * E[:, None]), dy, dS_e * keep, F32, OP, PREC)
        dS_o = _dot(tl.trans(q_o * E[:, None]), dy, dS_o * keep, F32, OP, PREC)

    tl.store(dh0_ptr + bh * P * N + st_off, dS_e, mask=st_mask)
    tl.store(dh0_ptr + bh * P * N + st_off + 1, dS_o, mask=st_mask)
    if HAS_H0:
        S_e = tl.load(h0_ptr + bh * P * N + st_off, mask=st_mask, other=0.0)
        S_o = tl.load(h0_ptr + bh * P * N + st_off + 1, mask=st_mask, other=0.0)
        tl.store(carry0_ptr + (bh * n_pb + pid_p) * N2 + n, tl.sum(dS_e * S_o - dS_o * S_e, axis=1), mask=n_ok)
    else:
        tl.store(carry0_ptr + (bh * n_pb + pid_p) * N2 + n, tl.zeros([BLOCK_N2], dtype=tl.float32), mask=n_ok)


@triton.jit
def _add_pairs(ptr, src, mask, d_e, d_o, cos, sin, ATOMIC: tl.constexpr):
    """ptr[src], ptr[src + 1] += the pairs (d_e, d_o) turned back by -Φ: atomically, or read-modify-write
    where this program owns the entries (the launcher zero-fills them)."""
    g_e = d_e * cos + d_o * sin
    g_o = d_o * cos - d_e * sin
    if ATOMIC:
        tl.atomic_add(ptr + src, g_e, mask=mask, sem="relaxed")
        tl.atomic_add(ptr + src + 1, g_o, mask=mask, sem="relaxed")
    else:
        tl.store(ptr + src, tl.load(ptr + src, mask=mask, other=0.0) + g_e, mask=mask)
        tl.store(ptr + src + 1, tl.load(ptr + src + 1, mask=mask, other=0.0) + g_o, mask=mask)


@triton.jit
def _mamba3_bwd_chunk(
    x_ptr, dt_ptr, A_ptr, lam_ptr, theta_ptr, B_ptr, C_ptr, D_ptr, z_ptr, gy_ptr, Sc_ptr, Pc_ptr, dSc_ptr,
    vend_ptr, carry_ptr, K0_ptr,
    dx_ptr, dz_ptr, dB_ptr, dC_ptr, dth_ptr, da_ptr, dgam_ptr, dwgt_ptr, ddt_ptr, dD_ptr,
    L, H, HPG, G, R, P, N2, n_chunks, n_pb,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_K0: tl.constexpr, ATOMIC: tl.constexpr, HEADS: tl.constexpr,
    PART: tl.constexpr, F32: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr,
    BLOCK_T: tl.constexpr, RP: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N2: tl.constexpr, BLOCK_PB: tl.constexpr,
):
    # x, z, gy, dx, dz (b, L, H, R, P); dt, A, lam, da, ddt (b, L, H) float32; theta, dth (b, L, H, N2) float32;
    # B, C (b, L, G, R, 2 N2); dB, dC (b, L, G, R, 2 N2) float32, zero-filled; dgam, dwgt (b, L, H, R);
    # D (H, P); dD (b, n_chunks, H, P); Sc, dSc, Pc, vend, carry from the forward pass and _mamba3_bwd_state;
    # K0 (b, H, N2) = dΦ_T - ⟨dh_T, h_T J⟩.
    # PART 0: dq̂, dk̂ -> dB, dC, dθ; PART 1: dx, dz, dD and the weights' and decays' gradients; 2: both.
    # Split in two launches, each kernel holds about half the live tiles of the whole (both recompute the
    # rotations and dy xᵀ).
    ROWS: tl.constexpr = BLOCK_T * RP
    OP = x_ptr.dtype.element_ty
    c = tl.program_id(0)
    pid_bg = tl.program_id(1)
    bi = pid_bg // G
    g = pid_bg % G
    h_first = g * HPG + tl.program_id(2) * HEADS
    N = 2 * N2
    rows = tl.arange(0, ROWS)
    tok = rows // RP
    rank = rows % RP
    first = rank == 0
    n = tl.arange(0, BLOCK_N2)
    n_ok = n < N2
    p = tl.arange(0, BLOCK_P)
    p_ok = p < P
    ti = tok[:, None]
    tj = tok[None, :]
    causal = ti >= tj
    below = ti > tj
    same = ti == tj
    t = c * BLOCK_T + tok
    t_ok = t < L
    row_ok = t_ok & (rank < R)
    src, rn_mask = _pairs(t, rank, row_ok, n, n_ok, G, R, N2)
    st_mask = n_ok[:, None] & p_ok[None, :]
    rp_mask = row_ok[:, None] & p_ok[None, :]
    tn_mask = t_ok[:, None] & n_ok[None, :]
    pb = tl.arange(0, BLOCK_PB)
    bg = (bi.to(tl.int64) * L * G + g) * R * N

    for hh in range(0, HEADS):
        h = h_first + hh
        bh = (bi * H + h).to(tl.int64)
        sc = bi.to(tl.int64) * L * H + h
        ci = bh * n_chunks + c
        xo = sc * R * P + (t * (H * R * P) + rank * P)[:, None] + p[None, :]  # (ROWS, BLOCK_P)
        st_off = ci * P * N + p[None, :] * N + 2 * n[:, None]  # (BLOCK_N2, BLOCK_P) of hᵀ
        psi = tl.load(Pc_ptr + ci * N2 + n, mask=n_ok, other=0.0)
        dt, a, gamma, wgt = _scalars(dt_ptr + sc, A_ptr + sc, lam_ptr + sc, t, t_ok, first, L, H)
        a_cum = tl.cumsum(a, axis=0)
        a_end = tl.sum(a, axis=0)
        cos, sin, _th, _delta = _angles(theta_ptr + sc * N2, dt, psi, t, t_ok, first, n, n_ok, H, N2, FAST)
        k_e, k_o = _turn(B_ptr + bg, src, rn_mask, cos, sin)
        q_e, q_o = _turn(C_ptr + bg, src, rn_mask, cos, sin)
        if not F32:  # the products' operands, at half the registers
            k_e, k_o, q_e, q_o = k_e.to(OP), k_o.to(OP), q_e.to(OP), q_o.to(OP)
        E = tl.exp2(a_cum)
        V = tl.exp2(a_end - a_cum)
        U = V * wgt
        decay = tl.exp2(tl.minimum(a_cum[:, None] - a_cum[None, :], 0.0))
        W = tl.where(causal, decay * tl.where(below, wgt[None, :], gamma[None, :]), 0.0)
        xv = tl.load(x_ptr + xo, mask=rp_mask, other=0.0)
        dy = tl.load(gy_ptr + xo, mask=rp_mask, other=0.0).to(tl.float32)
        S_e = tl.load(Sc_ptr + st_off, mask=st_mask, other=0.0)  # S_c (hᵀ)
        S_o = tl.load(Sc_ptr + st_off + 1, mask=st_mask, other=0.0)
        if HAS_D:
            Dv = tl.load(D_ptr + h * P + p, mask=p_ok, other=0.0)
        if HAS_Z:
            zv = tl.load(z_ptr + xo, mask=rp_mask, other=0.0).to(tl.float32)
            sg = tl.sigmoid(zv)

        if PART != 1:
            if HAS_Z:
                dyg = dy * zv * sg  # the gradient through the gate, dy SiLU(z)
            else:
                dyg = dy
            Gm = W * _dot(dyg, tl.trans(xv), tl.zeros([ROWS, ROWS], dtype=tl.float32), F32, OP, PREC)
            # dq̂ = (W ∘ dy xᵀ) k̂ + E ∘ (dy S_c)  ->  dC, and its share of dΦ
            dq_e = _dot(dyg, tl.trans(S_e), tl.zeros([ROWS, BLOCK_N2], dtype=tl.float32), F32, OP, PREC) * E[:, None]
            dq_e = _dot(Gm, k_e, dq_e, F32, OP, PREC)
            dq_o = _dot(dyg, tl.trans(S_o), tl.zeros([ROWS, BLOCK_N2], dtype=tl.float32), F32, OP, PREC) * E[:, None]
            dq_o = _dot(Gm, k_o, dq_o, F32, OP, PREC)
            dphi = q_e.to(tl.float32) * dq_o - q_o.to(tl.float32) * dq_e
            _add_pairs(dC_ptr + bg, src, rn_mask, dq_e, dq_o, cos, sin, ATOMIC)
            # dk̂ = (W ∘ dy xᵀ)ᵀ q̂ + U ∘ (x dS_{c+1})  ->  dB, and its share of dΦ
            dS_e = tl.load(dSc_ptr + st_off, mask=st_mask, other=0.0)  # dS_{c+1}
            dS_o = tl.load(dSc_ptr + st_off + 1, mask=st_mask, other=0.0)
            dk_e = _dot(xv, tl.trans(dS_e), tl.zeros([ROWS, BLOCK_N2], dtype=tl.float32), F32, OP, PREC) * U[:, None]
            dk_e = _dot(tl.trans(Gm), q_e, dk_e, F32, OP, PREC)
            dk_o = _dot(xv, tl.trans(dS_o), tl.zeros([ROWS, BLOCK_N2], dtype=tl.float32), F32, OP, PREC) * U[:, None]
            dk_o = _dot(tl.trans(Gm), q_o, dk_o, F32, OP, PREC)
            dphi += k_e.to(tl.float32) * dk_o - k_o.to(tl.float32) * dk_e
            _add_pairs(dB_ptr + bg, src, rn_mask, dk_e, dk_o, cos, sin, ATOMIC)
            # the angles: a reverse cumsum within the chunk plus the carry from the later chunks
            carry = tl.sum(tl.load(carry_ptr + (ci * n_pb + pb)[:, None] * N2 + n[None, :],
                                   mask=(pb < n_pb)[:, None] & n_ok[None, :], other=0.0), axis=0)
            if HAS_K0:
                carry += tl.load(K0_ptr + bh * N2 + n, mask=n_ok, other=0.0)
            rev = tl.sum(dphi, axis=0)[None, :] - tl.cumsum(dphi, axis=0) + dphi + carry[None, :]
            th_off = sc * N2 + (t * (H * N2))[:, None] + n[None, :]
            tl.store(dth_ptr + th_off, rev * dt[:, None], mask=tn_mask & first[:, None])
            th = tl.load(theta_ptr + th_off, mask=tn_mask & first[:, None], other=0.0)
            tl.store(ddt_ptr + sc + t * H, tl.sum(th * rev, axis=1), mask=t_ok & first)

        if PART != 0:
            s = _dot(q_e, tl.trans(k_e), tl.zeros([ROWS, ROWS], dtype=tl.float32), F32, OP, PREC)
            s = _dot(q_o, tl.trans(k_o), s, F32, OP, PREC)
            Ws = W * s
            y_off = _dot(q_e, S_e, tl.zeros([ROWS, BLOCK_P], dtype=tl.float32), F32, OP, PREC)
            y_off = _dot(q_o, S_o, y_off, F32, OP, PREC) * E[:, None]
            if HAS_Z:  # through the gate: dy = g SiLU(z), dz = g y σ(z)(1 + z(1 - σ(z)))
                y_pre = _dot(Ws, xv, y_off, F32, OP, PREC)
                if HAS_D:
                    y_pre += Dv[None, :] * xv.to(tl.float32)
                tl.store(dz_ptr + xo, (dy * y_pre * sg * (1.0 + zv * (1.0 - sg))).to(dz_ptr.dtype.element_ty),
                         mask=rp_mask)
                dy = dy * zv * sg
            dV = tl.sum(dy * y_off, axis=1)  # the decays' gradient, row by row
            ds = _dot(dy, tl.trans(xv), tl.zeros([ROWS, ROWS], dtype=tl.float32), F32, OP, PREC) * s
            # dx = (W ∘ s)ᵀ dy + U ∘ (k̂ dS_{c+1}ᵀ) + D dy, and the state's share of the weights and decays
            dS_e = tl.load(dSc_ptr + st_off, mask=st_mask, other=0.0)  # dS_{c+1}
            dS_o = tl.load(dSc_ptr + st_off + 1, mask=st_mask, other=0.0)
            KdS = _dot(k_e, dS_e, tl.zeros([ROWS, BLOCK_P], dtype=tl.float32), F32, OP, PREC)
            KdS = _dot(k_o, dS_o, KdS, F32, OP, PREC)  # (ROWS, BLOCK_P): row j is dS_{c+1} k̂_j
            xdSk = tl.sum(xv.to(tl.float32) * KdS, axis=1)
            dxv = _dot(tl.trans(Ws), dy, KdS * U[:, None], F32, OP, PREC)
            if HAS_D:
                dxv += Dv[None, :] * dy
                tl.store(dD_ptr + ((bi * n_chunks + c) * H + h).to(tl.int64) * P + p,
                         tl.sum(dy * xv.to(tl.float32), axis=0), mask=p_ok)
            tl.store(dx_ptr + xo, dxv.to(dx_ptr.dtype.element_ty), mask=rp_mask)
            # the weights (per row; the launcher sums the ranks) and the decays: a reverse cumsum within
            # the chunk plus the chunk's whole share
            dlog = ds * W  # the gradient of each entry's log decay
            dV += tl.sum(dlog, axis=1) - tl.sum(dlog, axis=0) - U * xdSk
            vend = tl.sum(tl.load(vend_ptr + ci * n_pb + pb, mask=pb < n_pb, other=0.0), axis=0)
            dV_end = tl.exp2(a_end) * vend + tl.sum(U * xdSk, axis=0)
            tl.store(da_ptr + sc + t * H, tl.sum(dV, axis=0) - tl.cumsum(dV, axis=0) + dV + dV_end,
                     mask=t_ok & first)
            so_r = sc * R + t * (H * R) + rank
            tl.store(dgam_ptr + so_r, tl.sum(tl.where(same, ds, 0.0), axis=0), mask=row_ok)
            tl.store(dwgt_ptr + so_r, tl.sum(tl.where(below, ds * decay, 0.0), axis=0) + V * xdSk, mask=row_ok)
        if not ATOMIC:
            tl.debug_barrier()  # the next head reads dB, dC back: every thread's writes first


def _divisor(n, k):
    """k heads per program, 0 meaning all n; rounded down to a divisor of n."""
    k = max(1, min(n, k or n))
    while n % k:
        k -= 1
    return k


def bwd_launch_config(x, N, chunk_size, R, max_rows=None, state_block_p=None, state_warps=None, chunk_warps=None,
                      split=None, num_stages=None, heads=None, x_heads=None, fast_trig=None, lowp=True,
                      f32_precision=None, G=None):
    """Block sizes of the two backward kernels (and the rows per chunk of the forward pass that saves the
    states). Returns (meta shared by both, n_chunks, state-kernel extras, chunk launches: a list of
    (PART, extras) for the chunk kernel)."""
    P, H = x.shape[-1], x.shape[2]
    interp = interpreting()
    # the forward's meta (rows per chunk, precision, trig); each backward kernel picks its own BLOCK_P
    meta, n_chunks, _ = launch_config(x, N, chunk_size, R, max_rows=max_rows or MAX_ROWS, fast_trig=fast_trig,
                                      lowp=lowp, f32_precision=f32_precision)
    del meta["BLOCK_P"]
    hpg = H // (G or 1)
    q_heads = _divisor(hpg, HEADS if heads is None else heads)
    x_heads = _divisor(hpg, X_HEADS if x_heads is None else x_heads)
    state = dict(BLOCK_P=max(16, min(next_pow2(P), state_block_p or STATE_BLOCK_P)))
    split = SPLIT if split is None else split
    parts = [(0, q_heads), (1, x_heads)] if split else [(2, q_heads)]
    chunk = [(part, dict(BLOCK_P=max(16, next_pow2(P)), HEADS=hh, ATOMIC=hh < hpg)) for part, hh in parts]
    if not interp:
        stages = num_stages or 1
        state.update(num_warps=state_warps or STATE_WARPS, num_stages=stages)
        for _, ck in chunk:
            ck.update(num_warps=chunk_warps or CHUNK_WARPS, num_stages=stages)
    return meta, n_chunks, state, chunk


TRAIN_WARPS = 8  # the forward pass of training (it also stores a state per chunk): 8 warps spill least


def training_knobs(knobs):
    """The forward pass of training saves its states at the backward's chunks: rows per chunk from
    ``bwd_max_rows`` (default MAX_ROWS); the other ``bwd_*`` knobs are the backward's own."""
    out = {k: v for k, v in knobs.items() if not k.startswith("bwd_")}
    out["max_rows"] = knobs.get("bwd_max_rows") or MAX_ROWS
    out.setdefault("num_warps", TRAIN_WARPS)
    return out


def backward_knobs(knobs):
    """The backward kernels' launch options: the ``bwd_*`` knobs and the shared ones."""
    out = {k[4:]: v for k, v in knobs.items() if k.startswith("bwd_")}
    out.update({k: knobs[k] for k in SHARED_KNOBS if k in knobs})
    return out


def _pair_dot(dS, S):
    """⟨dS, S J⟩ per pair: Σ_p dS[p, 2i] S[p, 2i+1] - dS[p, 2i+1] S[p, 2i]; (b, H, P, N) -> (b, H, N/2)."""
    return (dS[..., 0::2] * S[..., 1::2] - dS[..., 1::2] * S[..., 0::2]).sum(-2)


def mamba3_bwd(gy, ghT, gpsiT, Sc, Pc, hT, meta, x, dt, A, B, C, lam, theta, D, z, h0, psi0):
    """Gradients of ``mamba3_core``'s inputs, as a dict (names as its arguments; None where not needed).

    gy (like x), ghT (b, H, P, N), gpsiT (b, H, N/2): the gradients of the outputs (each may be None).
    Sc, Pc, hT, meta: what the forward pass saved and returned.
    """
    b, L, H, R, P = x.shape
    G, N = B.shape[2], B.shape[-1]
    N2 = N // 2
    bmeta, n_chunks, st, ck = bwd_launch_config(x, N, meta["chunk_size"], R, G=G, **backward_knobs(meta["knobs"]))
    if bmeta["BLOCK_T"] != meta["BLOCK_T"] or n_chunks != meta["n_chunks"]:
        raise RuntimeError("mamba3 backward: the forward pass saved its states at other chunks "
                           f"({meta['BLOCK_T']} vs {bmeta['BLOCK_T']} tokens)")
    bmeta["F32"], bmeta["PREC"] = meta["F32"], meta["PREC"]
    work = torch.float32 if meta["F32"] else x.dtype
    cast = lambda t: None if t is None else t.to(work).contiguous()  # noqa: E731
    f32 = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
    xw, Bw, Cw, zw = cast(x), cast(B), cast(C), cast(z)
    gyw = torch.zeros(x.shape, device=x.device, dtype=work) if gy is None else cast(gy)
    dtf, Af, lamf, thf = f32(dt), f32(A), f32(lam), f32(theta)
    Df = None if D is None else (D[:, None] if D.dim() == 1 else D).float().expand(H, P).contiguous()
    Sc = Sc.to(work)
    dev = x.device
    zeros = lambda *s: torch.zeros(*s, device=dev, dtype=torch.float32)  # noqa: E731
    empty = lambda *s, dtype=torch.float32: torch.empty(*s, device=dev, dtype=dtype)  # noqa: E731
    ghT = f32(ghT)

    # 1. the reverse recurrence: dS_{c+1} per chunk, ⟨dS, S⟩ and ⟨dS, S J⟩ per P block
    n_pb = triton.cdiv(P, st["BLOCK_P"])
    dSc = torch.empty_like(Sc)
    vend, carry = empty(b, H, n_chunks, n_pb), empty(b, H, n_chunks, n_pb, N2)
    dh0, carry0 = empty(b, H, P, N), empty(b, H, n_pb, N2)
    d = gyw
    _mamba3_bwd_state[(n_pb, b * H)](
        dtf, Af, thf, Cw, d if zw is None else zw, gyw, Sc, Pc, d if h0 is None else f32(h0), f32(hT),
        d if ghT is None else ghT, dSc, vend, carry, dh0, carry0,
        L, H, H // G, G, R, P, N2, n_chunks, n_pb,
        HAS_Z=z is not None, HAS_H0=h0 is not None, HAS_DHT=ghT is not None, **bmeta, **st,
    )
    # the carry's constant part: the final angle's gradient and the final state's frame
    K0 = None
    if ghT is not None or gpsiT is not None:
        K0 = zeros(b, H, N2)
        if gpsiT is not None:
            K0 += gpsiT.float()
        if ghT is not None:
            K0 -= _pair_dot(ghT, hT.float())
        K0 = K0.contiguous()

    # 2. every chunk at once: dx, dz, dq̂, dk̂ -> dB, dC, dθ, and the per-token weights' gradients
    dx = empty(x.shape, dtype=work)
    dz = empty(x.shape, dtype=work) if z is not None else None
    dB, dC = zeros(b, L, G, R, N), zeros(b, L, G, R, N)  # added into, by read-modify-write or atomics
    dth = empty(b, L, H, N2)
    da, ddt = empty(b, L, H), empty(b, L, H)
    dgam, dwgt = zeros(b, L, H, R), zeros(b, L, H, R)  # rows of ranks >= R stay 0
    dD = empty(b, n_chunks, H, P) if D is not None else None
    for part, ck1 in ck:
        _mamba3_bwd_chunk[(n_chunks, b * G, (H // G) // ck1["HEADS"])](
            xw, dtf, Af, lamf, thf, Bw, Cw, d if Df is None else Df, d if zw is None else zw, gyw, Sc, Pc, dSc,
            vend, carry, d if K0 is None else K0,
            dx, d if dz is None else dz, dB, dC, dth, da, dgam, dwgt, ddt, d if dD is None else dD,
            L, H, H // G, G, R, P, N2, n_chunks, n_pb,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_K0=K0 is not None, BLOCK_PB=max(2, next_pow2(n_pb)),
            PART=part, **bmeta, **ck1,
        )
    # the weights: γ_t = λ_t Δ_t on the diagonal and in w_t = γ_t + (1 - λ_{t+1}) Δ_{t+1} below it
    g1, g2 = dgam.sum(-1), dwgt.sum(-1)  # (b, L, H)
    dgamma = g1 + g2
    g2_prev = torch.nn.functional.pad(g2[:, :-1], (0, 0, 1, 0))  # w_{t-1}'s share of step t
    grads = dict(x=dx, dt=da * Af + dgamma * lamf + g2_prev * (1 - lamf) + ddt, A=da * dtf,
                 lam=(dgamma - g2_prev) * dtf, B=dB, C=dC, theta=dth, z=dz, h0=dh0)
    # every angle follows Φ_{-1}: its gradient is the carry before the first chunk
    dpsi0 = carry0.sum(2)
    if K0 is not None:
        dpsi0 = dpsi0 + K0
    grads["psi0"] = dpsi0
    if D is not None:
        dD = dD.sum((0, 1))  # (H, P)
        grads["D"] = dD.sum(-1) if D.dim() == 1 else dD
    return grads
