"""Triton Mamba-3 scan, SISO and MIMO (chapter 9).

The recurrence (``ssm_edu/mamba3.py``), per head with a P x N state:
h_t = α_t h_{t-1} + β_t Σ_r x_{t-1,r} k_{t-1,r}ᵀ + γ_t Σ_r x_{t,r} k_{t,r}ᵀ,
y_{t,r} = h_t q_{t,r} + D x_{t,r}, k and q being B and C turned pair by pair
by the cumulative angles Φ_t.

Chunk frames. Inside chunk c the angles are Φ_t = Ψ_c + φ_t, with Ψ_c the
angle at the chunk's start and φ_t the chunk's own running sum of θ Δ. Since
Rot(Ψ + φ) = Rot(Ψ) Rot(φ), the kernels turn B and C by the local φ only,
k̂_t = Rot(φ_t) B_t, and keep the state in the chunk's frame, Ŝ = h Rot(Ψ_c):
then Ŝ q̂_t = h q_t and the chunk's update is the same formula with k̂. Moving
to the next chunk turns the state's pairs by the chunk's total angle δ_c.
No program ever needs the global Φ, so the rotations of all chunks are
independent work.

Two kernels.

1. ``_mamba3_rotate``: one program per (chunk, batch x head), all in
   parallel. Loads θ, Δ, B, C of the chunk, forms φ with a running sum,
   cos and sin, writes k̂ and q̂ to scratch buffers (b, H, L R, N) with
   each row's entries reordered as [even | odd] (so that a pair's two
   entries are two (rows, N/2) tiles: a rotation is four multiplies and no
   shuffle) and δ_c (b, H, chunks, N/2).
2. ``_mamba3_scan``: one program per (batch, head, block of BLOCK_P of the P
   rows of the state); the grid's fastest axis is the P-block, so the
   programs of one head run side by side and share k̂, q̂ through the L2
   cache. A program walks the chunks in order (Q tokens; for MIMO a chunk's
   rows are its (token, rank) pairs, row i = token i // RP, rank i % RP):
   loads Δ, A, λ (and Δ, λ of the next token), k̂, q̂, x; computes the parallel
   form inside the chunk, (decay ∘ two-term weight ∘ q̂ k̂ᵀ) x, with decay
   exp(a_cum_t - a_cum_s) and weight γ_s + (1 - λ_{s+1}) Δ_{s+1} below the
   diagonal, γ_t on it; adds exp(a_cum_t) Ŝ q̂_t, D x, the SiLU(z) gate;
   stores y; then Ŝ <- exp(a_last) Ŝ + (x ⊙ w)ᵀ k̂ with
   w_s = exp(a_last - a_cum_s)(γ_s + (1 - λ_{s+1}) Δ_{s+1}) (the β-term of
   the next chunk's first token is folded in here) and turns Ŝ by δ_c.

The scan kernel can also do the rotations itself (``fused=True``: θ, B, C
are read by every P-block program and k̂, q̂ never touch memory); it needs
more registers per chunk and measured slower, so it is not the default.

Where the state lives. Ŝ (BLOCK_P x N, float32, as its even and odd columns)
stays in registers for the whole sequence. Traffic: θ, B, C read and k̂, q̂
written once by the first kernel; k̂, q̂, x read and y written once by the
second. The launcher moves an initial state into the first chunk's frame and
the final one back.

Precision. Everything is computed in float32, and the products are exact
(``input_precision="ieee"``). bfloat16 / float16 inputs are cast to float32
on the way in and y is cast back. A faster path exists (``lowp=True``: k̂, q̂
stored in bfloat16, tensor-core products with bfloat16 operands and float32
accumulation, the GPU's fast cos and sin on angles folded into [-π, π)), but
it is off by default: it gave a wrong result on an H100 in one configuration
(see ``LOWP_PRODUCTS``), not yet explained. In Triton's CPU interpreter
everything runs in float32 too.

Chunk length. Rows per chunk = next_pow2(chunk_size) x RP, at least 16 (the
smallest ``tl.dot``) and at most MAX_ROWS (registers): the kernels round
``chunk_size`` accordingly. The result does not depend on it.

Performance (H100 80GB HBM3, torch 2.11, Triton 3.6; B4 L4096 H32 P64 N128
G1, bf16, forward, D, θ float32): 1.02 ms with the bfloat16 products, against
0.71 ms for mamba_ssm's ``mamba3_siso_combined`` in the same run; the
memory floor is about 0.07 ms. Every configuration tried (fused or not,
16-64 tokens per chunk, 32 or 64 state rows per program, 4 or 8 warps) took
1.0-2.5 ms: about 8 µs per chunk step of a program that walks 128 chunks in
order, far from the memory floor, so the sequential walk itself is the
bottleneck. Beating the peer needs the chunks' work in parallel (chunk
states computed independently, a short state-passing pass, then the
outputs), as ``mamba_chunk_scan_combined`` does for Mamba-2.

Gradients: the backward pass recomputes the chunked PyTorch form
(``mamba3_vectorized``) under autograd, in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import interpreting, next_pow2

__all__ = ["mamba3_triton", "mamba3_fwd"]

_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)
# Defaults measured on an H100 (module docstring, "Performance"): two kernels, chunks of 32 rows,
# programs of 32 state rows, 4 warps.
MAX_ROWS = 32  # rows (tokens x ranks) per chunk, at most (registers)
BLOCK_P_MAX = 32  # rows of the state per program, at most
FUSED = False  # True: rotate inside the scan kernel instead of in a first kernel
# bfloat16 operands for the tensor-core products (and fast cos, sin) when the inputs are bfloat16 or
# float16. Off: on an H100 (Triton 3.6) that path gave a relative error of 0.89 in chapter 9's check
# (SISO, b 1, L 70, H 2, P 8, N 16, G 1, chunk 32, D, no z, no initial state; bfloat16 inputs), while the
# float32 path was right (2.4e-7) on the same inputs and the test cases with z and an initial state passed
# in both. Until that is understood on a GPU, low-precision inputs are computed by the float32 kernels
# (cast on the way in, y cast back): right, but slower than the bfloat16 products would be.
LOWP_PRODUCTS = False
TWO_PI = 6.283185307179586


@triton.jit
def _mm(a, b, acc, LOWP: tl.constexpr):
    """acc + a @ b in float32: bfloat16 operands (LOWP) or exact float32."""
    if LOWP:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc=acc)
    else:
        return tl.dot(a, b, acc=acc, input_precision="ieee")


@triton.jit
def _cos_sin(phi, FAST: tl.constexpr):
    if FAST:
        phi = phi - 6.283185307179586 * tl.floor(phi * 0.15915494309189535 + 0.5)  # into [-π, π)
        c = tl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=f,f", [phi], dtype=tl.float32, is_pure=True, pack=1)
        s = tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=f,f", [phi], dtype=tl.float32, is_pure=True, pack=1)
    else:
        c = tl.cos(phi)
        s = tl.sin(phi)
    return c, s


@triton.jit
def _rotate_chunk(theta_ptr, B_ptr, C_ptr, dt, t, t_ok, row_ok, first, rank, offs_n, n_ok, H, G, R, N2,
                  FAST: tl.constexpr):
    """k̂, q̂ of one chunk's rows as even and odd halves (ROWS, BLOCK_N2) float32, and δ (BLOCK_N2,).

    theta_ptr, B_ptr, C_ptr point at this (batch, head)'s θ and (batch, group)'s B, C; dt (ROWS,) per row.
    φ is the running sum of θ Δ from the chunk's start; each token adds its increment once (its rank-0 row).
    """
    N = 2 * N2
    th = tl.load(theta_ptr + (t * (H * N2))[:, None] + offs_n[None, :], mask=t_ok[:, None] & n_ok[None, :],
                 other=0.0).to(tl.float32)
    inc = tl.where(first[:, None], th * dt[:, None], 0.0)  # (ROWS, BLOCK_N2)
    cos, sin = _cos_sin(tl.cumsum(inc, axis=0), FAST)
    mask = row_ok[:, None] & n_ok[None, :]
    src = (t * (G * R * N) + rank * N)[:, None] + 2 * offs_n[None, :]  # even entries of B_t, C_t
    u = tl.load(B_ptr + src, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(B_ptr + src + 1, mask=mask, other=0.0).to(tl.float32)
    k_e = u * cos - v * sin
    k_o = u * sin + v * cos
    u = tl.load(C_ptr + src, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(C_ptr + src + 1, mask=mask, other=0.0).to(tl.float32)
    q_e = u * cos - v * sin
    q_o = u * sin + v * cos
    return k_e, k_o, q_e, q_o, tl.sum(inc, axis=0)


@triton.jit
def _mamba3_rotate(
    dt_ptr, theta_ptr, B_ptr, C_ptr, k_ptr, q_ptr, delta_ptr,
    L, H, HPG, G, R, N2, n_chunks,
    FAST: tl.constexpr, BLOCK_T: tl.constexpr, RP: tl.constexpr, BLOCK_N2: tl.constexpr,
):
    # dt (b, L, H); theta (b, L, H, N2); B, C (b, L, G, R, 2 N2) -> k̂, q̂ (b, H, L R, 2 N2) as [even | odd]
    # and delta (b, H, n_chunks, N2): the chunk's total angle.
    ROWS: tl.constexpr = BLOCK_T * RP
    c = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = pid_bh // H
    h = pid_bh % H
    g = h // HPG
    N = 2 * N2
    rows = tl.arange(0, ROWS)
    rank = rows % RP
    t = c * BLOCK_T + rows // RP
    t_ok = t < L
    row_ok = t_ok & (rank < R)
    offs_n = tl.arange(0, BLOCK_N2)
    n_ok = offs_n < N2
    # scalar 64-bit bases, 32-bit offsets inside one (batch, head)
    dt = tl.load(dt_ptr + bi.to(tl.int64) * L * H + h + t * H, mask=t_ok, other=0.0).to(tl.float32)
    k_e, k_o, q_e, q_o, delta = _rotate_chunk(
        theta_ptr + (bi.to(tl.int64) * L * H + h) * N2, B_ptr + (bi.to(tl.int64) * L * G + g) * R * N,
        C_ptr + (bi.to(tl.int64) * L * G + g) * R * N, dt, t, t_ok, row_ok, rank == 0, rank, offs_n, n_ok,
        H, G, R, N2, FAST)
    mask = row_ok[:, None] & n_ok[None, :]
    dst = ((t * R + rank) * N)[:, None] + offs_n[None, :]
    k_ptr += pid_bh.to(tl.int64) * L * R * N
    q_ptr += pid_bh.to(tl.int64) * L * R * N
    tl.store(k_ptr + dst, k_e.to(k_ptr.dtype.element_ty), mask=mask)
    tl.store(k_ptr + dst + N2, k_o.to(k_ptr.dtype.element_ty), mask=mask)
    tl.store(q_ptr + dst, q_e.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(q_ptr + dst + N2, q_o.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(delta_ptr + (pid_bh.to(tl.int64) * n_chunks + c) * N2 + offs_n, delta, mask=n_ok)


@triton.jit
def _mamba3_scan(
    x_ptr, dt_ptr, A_ptr, lam_ptr, k_ptr, q_ptr, delta_ptr, theta_ptr, B_ptr, C_ptr, D_ptr, z_ptr, h0_ptr,
    y_ptr, hT_ptr,
    L, H, HPG, G, R, P, N2, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr,
    LOWP: tl.constexpr, FUSED: tl.constexpr, FAST: tl.constexpr,
    BLOCK_T: tl.constexpr, RP: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N2: tl.constexpr,
):
    # x, z, y (b, L, H, R, P); dt, A, lam (b, L, H); k̂, q̂ (b, H, L R, 2 N2) [even | odd];
    # delta (b, H, n_chunks, N2); D (H, P); h0, hT (b, H, P, 2 N2) in the first / after the last chunk's frame.
    # FUSED: no k̂, q̂, delta buffers; the chunk's rotations are done here from theta, B, C (_rotate_chunk).
    ROWS: tl.constexpr = BLOCK_T * RP
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = pid_bh // H
    h = pid_bh % H
    N = 2 * N2

    rows = tl.arange(0, ROWS)
    tok = rows // RP  # token of each row within the chunk
    rank = rows % RP
    first = rank == 0  # one row per token carries the token's log-decay
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N2)
    p_ok = offs_p < P
    n_ok = offs_n < N2
    hmask = p_ok[:, None] & n_ok[None, :]
    hoff = (pid_bh.to(tl.int64) * P + offs_p[:, None]) * N + 2 * offs_n[None, :]  # even columns of h
    if HAS_H0:
        S_e = tl.load(h0_ptr + hoff, mask=hmask, other=0.0)  # (BLOCK_P, BLOCK_N2): the state's even columns
        S_o = tl.load(h0_ptr + hoff + 1, mask=hmask, other=0.0)  # and odd ones
    else:
        S_e = tl.zeros([BLOCK_P, BLOCK_N2], dtype=tl.float32)
        S_o = tl.zeros([BLOCK_P, BLOCK_N2], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + h * P + offs_p, mask=p_ok, other=0.0).to(tl.float32)  # (BLOCK_P,)
    ti = tok[:, None]
    tj = tok[None, :]
    # scalar 64-bit bases, 32-bit offsets inside one (batch, head): fewer registers per tile
    x_ptr += (bi.to(tl.int64) * L * H + h) * R * P
    y_ptr += (bi.to(tl.int64) * L * H + h) * R * P
    if HAS_Z:
        z_ptr += (bi.to(tl.int64) * L * H + h) * R * P
    dt_ptr += bi.to(tl.int64) * L * H + h
    A_ptr += bi.to(tl.int64) * L * H + h
    lam_ptr += bi.to(tl.int64) * L * H + h
    if FUSED:
        g = h // HPG
        theta_ptr += (bi.to(tl.int64) * L * H + h) * N2
        B_ptr += (bi.to(tl.int64) * L * G + g) * R * N
        C_ptr += (bi.to(tl.int64) * L * G + g) * R * N
    else:
        k_ptr += pid_bh.to(tl.int64) * L * R * N
        q_ptr += pid_bh.to(tl.int64) * L * R * N

    for c in range(0, n_chunks):
        t = c * BLOCK_T + tok  # (ROWS,)
        t_ok = t < L
        row_ok = t_ok & (rank < R)
        nxt_ok = (t + 1) < L
        sc = t * H  # (ROWS,) into (L, H) of this batch entry and head
        dt = tl.load(dt_ptr + sc, mask=t_ok, other=0.0)
        a = dt * tl.load(A_ptr + sc, mask=t_ok, other=0.0)
        lam = tl.load(lam_ptr + sc, mask=t_ok, other=0.0)
        dt_n = tl.load(dt_ptr + sc + H, mask=nxt_ok, other=0.0)
        lam_n = tl.load(lam_ptr + sc + H, mask=nxt_ok, other=0.0)
        gamma = lam * dt
        wgt = gamma + (1.0 - lam_n) * dt_n  # the weight of column s below the diagonal
        a = tl.where(first, a, 0.0)
        a_cum = tl.cumsum(a, axis=0)  # (ROWS,) Σ Δ A up to the row's token
        a_last = tl.sum(a, axis=0)

        if FUSED:
            k_e, k_o, q_e, q_o, delta = _rotate_chunk(theta_ptr, B_ptr, C_ptr, dt, t, t_ok, row_ok, first, rank,
                                                      offs_n, n_ok, H, G, R, N2, FAST)
            if LOWP:  # operands in the precision the products take: half the registers
                k_e, k_o, q_e, q_o = k_e.to(tl.bfloat16), k_o.to(tl.bfloat16), q_e.to(tl.bfloat16), q_o.to(tl.bfloat16)
        else:
            kq = (t * R + rank)[:, None] * N + offs_n[None, :]  # (ROWS, BLOCK_N2) in this (batch, head)'s rows
            rn_mask = row_ok[:, None] & n_ok[None, :]
            k_e = tl.load(k_ptr + kq, mask=rn_mask, other=0.0)
            k_o = tl.load(k_ptr + kq + N2, mask=rn_mask, other=0.0)
            q_e = tl.load(q_ptr + kq, mask=rn_mask, other=0.0)
            q_o = tl.load(q_ptr + kq + N2, mask=rn_mask, other=0.0)
            delta = tl.load(delta_ptr + (pid_bh.to(tl.int64) * n_chunks + c) * N2 + offs_n, mask=n_ok, other=0.0)
        xo = (t * (H * R * P) + rank * P)[:, None] + offs_p[None, :]  # (ROWS, BLOCK_P) in (L, ., R, P)
        rp_mask = row_ok[:, None] & p_ok[None, :]
        xv = tl.load(x_ptr + xo, mask=rp_mask, other=0.0)

        # the state carried in, in this chunk's frame: exp(a_cum_t) Ŝ q̂_t
        y = _mm(q_o, tl.trans(S_o), _mm(q_e, tl.trans(S_e), tl.zeros([ROWS, BLOCK_P], dtype=tl.float32), LOWP), LOWP)
        y = y * tl.exp(a_cum)[:, None]
        # inside the chunk: (decay ∘ weight ∘ q̂ k̂ᵀ) x
        s = _mm(q_o, tl.trans(k_o), _mm(q_e, tl.trans(k_e), tl.zeros([ROWS, ROWS], dtype=tl.float32), LOWP), LOWP)
        w = tl.where(ti > tj, wgt[None, :], gamma[None, :])
        s = tl.where(ti >= tj, s * w * tl.exp(tl.minimum(a_cum[:, None] - a_cum[None, :], 0.0)), 0.0)
        y = _mm(s, xv, y, LOWP)  # (ROWS, BLOCK_P)
        xf = xv.to(tl.float32)
        if HAS_D:
            y += Dv[None, :] * xf
        if HAS_Z:
            zv = tl.load(z_ptr + xo, mask=rp_mask, other=0.0).to(tl.float32)
            y = y * zv * tl.sigmoid(zv)
        tl.store(y_ptr + xo, y.to(y_ptr.dtype.element_ty), mask=rp_mask)

        # the state at the chunk's end (the next token's β-term folded in) ...
        xw = xf * (tl.exp(a_last - a_cum) * wgt)[:, None]  # (ROWS, BLOCK_P)
        keep = tl.exp(a_last)
        S_e = _mm(tl.trans(xw), k_e, S_e * keep, LOWP)
        S_o = _mm(tl.trans(xw), k_o, S_o * keep, LOWP)
        # ... moved to the next chunk's frame: Ŝ <- Ŝ Rot(δ_c)
        cd = tl.cos(delta)[None, :]
        sd = tl.sin(delta)[None, :]
        S_e, S_o = S_e * cd + S_o * sd, S_o * cd - S_e * sd
        if FUSED and STORE_FINAL:
            if pid_p == 0:  # the chunk angles give the final angle
                tl.store(delta_ptr + (pid_bh.to(tl.int64) * n_chunks + c) * N2 + offs_n, delta, mask=n_ok)

    if STORE_FINAL:
        tl.store(hT_ptr + hoff, S_e, mask=hmask)
        tl.store(hT_ptr + hoff + 1, S_o, mask=hmask)


def _rows(chunk_size, RP, max_rows):
    """Tokens per chunk: next_pow2(chunk_size), so that rows = tokens x RP is in [16, max_rows]."""
    tokens = next_pow2(chunk_size)
    tokens = min(tokens, max(1, max_rows // RP))
    return max(tokens, -(-16 // RP))


def turn_state(h, angle):
    """h Rot(angle) on the pairs of the state's last axis: (u, v) -> (u cos + v sin, v cos - u sin).

    h (b, H, P, N), angle (b, H, N/2). With angle = Ψ this takes a state into the
    frame of a chunk that starts at Ψ; with -Ψ, back.
    """
    u, v = h[..., 0::2], h[..., 1::2]
    c, s = torch.cos(angle)[:, :, None], torch.sin(angle)[:, :, None]
    return torch.stack([u * c + v * s, v * c - u * s], dim=-1).flatten(-2)


def mamba3_fwd(x, dt, A, B, C, lam, theta, D=None, z=None, h0=None, angle0=None, chunk_size=64,
               return_final_state=False, block_p=None, max_rows=None, num_warps=None, num_stages=None,
               rotate_warps=None, fast_trig=None, fused=None, lowp=None):
    """Launch the kernels (two, or one with ``fused``). Shapes as ``mamba3`` with the rank axis present:
    x, z (b, L, H, R, P), B, C (b, L, G, R, N), dt, A, lam (b, L, H),
    theta (b, L, H, N/2), D (H,) or (H, P); h0 (b, H, P, N) (with step 0's
    β-term already folded in) and angle0 (b, H, N/2) float32 or None.
    Returns y (like x) and, when asked, (h_T, angle_T) in float32.

    The keyword arguments after ``return_final_state`` override the block
    sizes and launch options (benchmarks and debugging only); ``lowp=True``
    turns on the bfloat16 products that ``LOWP_PRODUCTS`` keeps off.
    """
    if x.dtype not in _SUPPORTED:
        raise ValueError(f"mamba3(impl='triton') supports float32, bfloat16 and float16 x; got {x.dtype}")
    in_interpreter = interpreting()
    out_dtype = x.dtype
    b, L, H, R, P = x.shape
    G, N = B.shape[2], B.shape[-1]
    N2 = N // 2
    lowp = LOWP_PRODUCTS if lowp is None else lowp
    lowp = lowp and x.dtype != torch.float32 and not in_interpreter
    if in_interpreter or not lowp:  # float32 throughout: the interpreter knows no other; see LOWP_PRODUCTS
        x, B, C, theta = (t.float() for t in (x, B, C, theta))
        z = None if z is None else z.float()
    x, B, C, theta = (t.contiguous() for t in (x, B, C, theta))
    dt, A, lam = (t.float().contiguous() for t in (dt, A, lam))
    z = None if z is None else z.contiguous()
    if D is not None:
        D = (D[:, None] if D.dim() == 1 else D).float().expand(H, P).contiguous()  # (H, P)
    if h0 is not None and angle0 is not None:
        h0 = turn_state(h0.float(), angle0.float())  # into the first chunk's frame
    if h0 is not None:
        h0 = h0.float().contiguous()
    RP = next_pow2(R)
    BLOCK_T = _rows(chunk_size, RP, max_rows or MAX_ROWS)
    BLOCK_N2 = max(16, next_pow2(N2))
    n_chunks = triton.cdiv(L, BLOCK_T)
    fused = FUSED if fused is None else fused
    y = torch.empty_like(x)
    hT = torch.empty(b, H, P, N, device=x.device, dtype=torch.float32) if return_final_state else None
    dummy = x
    delta = (torch.empty(b, H, n_chunks, N2, device=x.device, dtype=torch.float32)
             if (return_final_state or not fused) else dummy)
    if fused:
        k_hat = q_hat = dummy
    else:
        k_hat = torch.empty(b, H, L * R, N, device=x.device, dtype=torch.bfloat16 if lowp else torch.float32)
        q_hat = torch.empty_like(k_hat)
    if in_interpreter:
        BLOCK_P = max(16, min(next_pow2(P), 32))
        extra, extra_rot = {}, {}
    else:
        BLOCK_P = block_p or max(16, min(next_pow2(P), BLOCK_P_MAX))
        rows = BLOCK_T * RP
        extra = dict(num_warps=num_warps or (8 if rows * BLOCK_P >= 2048 else 4))
        if num_stages is not None:
            extra["num_stages"] = num_stages
        extra_rot = dict(num_warps=rotate_warps or (8 if rows * BLOCK_N2 >= 4096 else 4))
    fast = (lowp if fast_trig is None else fast_trig) and not in_interpreter
    if not fused:
        _mamba3_rotate[(n_chunks, b * H)](
            dt, theta, B, C, k_hat, q_hat, delta, L, H, H // G, G, R, N2, n_chunks,
            FAST=fast, BLOCK_T=BLOCK_T, RP=RP, BLOCK_N2=BLOCK_N2, **extra_rot,
        )
    _mamba3_scan[(triton.cdiv(P, BLOCK_P), b * H)](
        x, dt, A, lam, k_hat, q_hat, delta, theta, B, C, D if D is not None else dummy,
        z if z is not None else dummy, h0 if h0 is not None else dummy, y, hT if hT is not None else dummy,
        L, H, H // G, G, R, P, N2, n_chunks,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_H0=h0 is not None, STORE_FINAL=return_final_state,
        LOWP=lowp, FUSED=fused, FAST=fast, BLOCK_T=BLOCK_T, RP=RP, BLOCK_P=BLOCK_P, BLOCK_N2=BLOCK_N2, **extra,
    )
    y = y.to(out_dtype)
    if not return_final_state:
        return y
    angleT = delta.sum(dim=2) + (0 if angle0 is None else angle0.float())  # Φ_{L-1} = Φ_{-1} + Σ_c δ_c
    angleT = torch.remainder(angleT, TWO_PI)
    return y, turn_state(hT, -angleT), angleT


def _prepare(x, B, C, z, dt, lam, initial_state):
    """Rank axis for SISO; the initial state as the kernel's h0 (with step 0's β-term folded in) and angle0."""
    from ssm_edu.mamba3 import _carried_in, _ranked, _start

    xr, Br, Cr, zr, siso = _ranked(x, B, C, z)
    if initial_state is None:
        return xr, Br, Cr, zr, siso, None, None
    if isinstance(initial_state, torch.Tensor):
        return xr, Br, Cr, zr, siso, initial_state.float(), None
    h0, angle0, kp, xp = _start(initial_state, xr, B.shape[-1])
    f = lambda t: t.float()  # noqa: E731
    S0 = _carried_in(f(h0), f(xp), f(kp), dt.float(), lam.float())  # (b, H, P, N)
    return xr, Br, Cr, zr, siso, S0, f(angle0)


def _final(Br, xr, hT, angleT, siso):
    """The Mamba3State after the last step: k_{L-1} = Rot(Φ_{L-1}) B_{L-1} and x_{L-1} from the inputs."""
    from ssm_edu.mamba3 import _heads, rotate_pairs

    H = xr.shape[2]
    k = rotate_pairs(_heads(Br[:, -1:], H)[:, 0].float(), angleT[:, :, None])  # (b, H, R, N)
    xl = xr[:, -1].to(torch.float32, copy=True)  # (b, H, R, P); a copy, never a view of an input
    if siso:
        k, xl = k[:, :, 0], xl[:, :, 0]
    return hT, angleT, k, xl


def _forward(x, dt, A, B, C, lam, theta, D, z, initial_state, chunk_size, return_final_state):
    xr, Br, Cr, zr, siso, h0, angle0 = _prepare(x, B, C, z, dt, lam, initial_state)
    out = mamba3_fwd(xr, dt, A, Br, Cr, lam, theta, D=D, z=zr, h0=h0, angle0=angle0, chunk_size=chunk_size,
                     return_final_state=return_final_state)
    if not return_final_state:
        return (out[:, :, :, 0] if siso else out,)
    y, hT, angleT = out
    return (y[:, :, :, 0] if siso else y, *_final(Br, xr, hT, angleT, siso))


class _Mamba3(torch.autograd.Function):
    """Forward: the kernel. Backward: autograd through ``mamba3_vectorized`` recomputed in float32."""

    @staticmethod
    def forward(ctx, chunk_size, return_final_state, state_kind, x, dt, A, B, C, lam, theta, D, z, *state):
        initial_state = None if state_kind is None else (state[0] if state_kind == "h" else tuple(state))
        ctx.save_for_backward(x, dt, A, B, C, lam, theta, D, z, *state)
        ctx.config = (chunk_size, return_final_state, state_kind)
        return _forward(x, dt, A, B, C, lam, theta, D, z, initial_state, chunk_size, return_final_state)

    @staticmethod
    def backward(ctx, *grads):
        from ssm_edu.mamba3 import mamba3_vectorized

        chunk_size, return_final_state, state_kind = ctx.config
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[3:]
        inputs = [None if t is None else t.detach().float().requires_grad_(bool(n)) for t, n in zip(saved, needs)]
        x, dt, A, B, C, lam, theta, D, z, *state = inputs
        initial_state = None if state_kind is None else (state[0] if state_kind == "h" else tuple(state))
        with torch.enable_grad():
            out = mamba3_vectorized(x, dt, A, B, C, lam, theta, D=D, z=z, chunk_size=chunk_size,
                                    initial_state=initial_state, return_final_state=return_final_state)
            outs = (out[0], *out[1]) if return_final_state else (out,)
            pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g.float() for _, g in pairs],
                                           allow_unused=True) if pairs and wanted else [None] * len(wanted))
        result = []
        for t, orig in zip(inputs, saved):
            g = next(got) if (t is not None and t.requires_grad) else None
            result.append(None if g is None else g.to(orig.dtype))
        return (None, None, None, *result)


def mamba3_triton(x, dt, A, B, C, lam, theta, D=None, z=None, chunk_size=64, initial_state=None,
                  return_final_state=False):
    """The scan in Triton (see the module docstring); arguments as ``ssm_edu.mamba3``.

    x, B, C, theta, z float32, bfloat16 or float16 (y in x's dtype); the
    final state (h, angle, k, x) in float32. Differentiable.
    """
    from ssm_edu.mamba3 import Mamba3State

    if initial_state is None:
        kind, state = None, ()
    elif isinstance(initial_state, torch.Tensor):
        kind, state = "h", (initial_state,)
    else:
        kind, state = "full", tuple(initial_state)
    args = (x, dt, A, B, C, lam, theta, D, z, *state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args):
        out = _Mamba3.apply(chunk_size, bool(return_final_state), kind, *args)
    else:
        out = _forward(x, dt, A, B, C, lam, theta, D, z, None if kind is None else
                       (state[0] if kind == "h" else state), chunk_size, return_final_state)
    if not return_final_state:
        return out[0]
    return out[0], Mamba3State(*out[1:])
