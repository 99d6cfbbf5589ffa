"""Triton Mamba-3 scan, SISO and MIMO (chapter 9): the forward kernel and the differentiable entry point.

The recurrence (``ssm_edu/mamba3.py``), per head with a P x N state:
h_t = α_t h_{t-1} + β_t Σ_r x_{t-1,r} k_{t-1,r}ᵀ + γ_t Σ_r x_{t,r} k_{t,r}ᵀ,
y_{t,r} = h_t q_{t,r} + D x_{t,r}, k and q being B and C turned pair by pair
by the cumulative angles Φ_t = Φ_{-1} + Σ_{s<=t} θ_s Δ_s.

How it differs from SSD (kernels/ssd.py), in the kernel's terms.

* The weights. Chunked SSD weighs the input of step s by Δ_s. The trapezoid
  gives it two terms: γ_s = λ_s Δ_s at step s, and the share
  (1 - λ_{s+1}) Δ_{s+1} that step s+1 gives its previous input. So a chunk
  loads Δ and λ one step past its end, uses γ_t on the mask's diagonal and
  w_s = γ_s + (1 - λ_{s+1}) Δ_{s+1} below it, and folds w_s (not Δ_s) into the
  state it hands on: the next chunk's first β-term is already inside that
  state, so a chunk never looks back.
* The rotation. k̂ = Rot(Φ) B and q̂ = Rot(Φ) C are made inside the chunk, from
  B, C and θ as loaded: the running sum of θ Δ over the chunk (a cumsum of a
  (rows, N/2) tile) plus the chunk's starting angle Ψ, which the program
  carries from chunk to chunk reduced modulo 2π. The state is kept in the
  global frame, so it is never turned between chunks, and k̂, q̂ never touch
  memory.
* No shared C Bᵀ. SSD forms C Bᵀ once per group and chunk (the heads of a
  group share it); here q̂ and k̂ depend on the head through Φ, so each
  program forms its own q̂ k̂ᵀ.

Work split. One kernel, ``_mamba3_fwd``: one program per (batch, head, block
of BLOCK_P of the P rows of the state); the grid's fastest axis is the P
block, so the programs of a head run side by side and share θ, B, C through
L2. A program walks the chunks in order. For MIMO a chunk's rows are its
(token, rank) pairs, row i = token i // RP, rank i % RP. Per chunk (a the
log2 decays, a⁺ their running sum):

    k̂, q̂ = Rot(Ψ + cumsum(θ Δ)) B, C            (rows, N/2) even and odd halves
    y    = exp2(a⁺_t) q̂ Ŝ + (q̂ k̂ᵀ ∘ exp2(a⁺_t - a⁺_s) ∘ w) x   (+ D x, ⊙ SiLU(z))
    Ŝ    = exp2(a⁺_end) Ŝ + (k̂ ∘ exp2(a⁺_end - a⁺_s) w_s)ᵀ x,   Ψ += Σ θ Δ (mod 2π)

Where the state lives. Ŝ = hᵀ (N, BLOCK_P), float32, as its even and odd
rows (two (N/2, BLOCK_P) tiles: a rotation is four multiplies, the products
take K = N/2), stays in registers for the whole sequence. Traffic: x, θ, B,
C, Δ, A, λ (and z) read once (θ, B, C once per P block, the second time from
L2), y written once. For the backward pass (training) the kernel also stores
the state entering each chunk, in the products' dtype, and Ψ.

Defaults (``MAX_ROWS``, ``BLOCK_P_MAX``, ``NUM_WARPS``, ``NUM_STAGES``): chunks
of 32 rows, P blocks of 32, 4 warps, 2 pipeline stages. Compiled for sm_90
(benchmarks/compile_mamba3.py) this uses 255 registers without spilling.
Chunks of 64 rows spill with 4 warps: every product here is chained to
another, for which Triton puts all the warps on the rows, so a (rows, 64)
float32 tile costs 32 registers per thread whatever the rows.

Precision. Decays, angles, the state and every accumulation are float32.
bfloat16 / float16 inputs use tensor-core products with operands in that
dtype and the GPU's fast cos and sin on angles reduced to [-π, π); float32
inputs use 3xTF32 products (``F32_PRECISION``; "ieee" is exact and slower).
Triton's CPU interpreter computes everything in float32.

Performance: benchmarks/notes/mamba3.md (floors, predictions, measurements).
Gradients: ``kernels/mamba3_bwd.py``. A first, one-token-per-step kernel for
reading: ``kernels/mamba3_first.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import interpreting, next_pow2

__all__ = ["mamba3_triton", "mamba3_fwd", "mamba3_core"]

_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)
TWO_PI = 6.283185307179586
# Launch defaults (the sweep in benchmarks/sweep_mamba3.py times the alternatives on a GPU).
MAX_ROWS = 32  # rows (tokens x ranks) per chunk, at most
BLOCK_P_MAX = 32  # rows of the state per program, at most
NUM_WARPS = 4
NUM_STAGES = 2
F32_PRECISION = "tf32x3"  # float32 inputs: three tensor-float32 products per product (1e-5 needs more than one)
# SISO float32 / bfloat16 scans: "ssd" (kernels/mamba3_ssd.py: a rotation kernel, then the SSD kernels with
# one group per head and a diagonal correction) or "fused" (this module's kernel; MIMO and float16 always take
# it). Why "ssd" by default: on an H100 (2026-12-07) this kernel took 3264 us forward and 29874 us forward plus
# backward at B4 L4096 H32 P64 N128, where the SSD kernels took 526 and 4597 us at four times the heads
# (H128) in the same run; the path's own rows ("triton" now, the fused kernel's "triton-fused") come from
# the next GPU run, and benchmarks/notes/mamba3.md says what to do if they disagree.
SISO_PATH = "ssd"


@triton.jit
def _trig(phi, FAST: tl.constexpr):
    """cos and sin of phi (float32). FAST: the GPU's approximate units, after
    reducing phi to [-π, π)."""
    if FAST:
        r = phi - 6.283185307179586 * tl.floor(phi * 0.15915494309189535 + 0.5)
        c = tl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=f,f", [r],
                                      dtype=tl.float32, is_pure=True, pack=1)
        s = tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=f,f", [r],
                                      dtype=tl.float32, is_pure=True, pack=1)
    else:
        c = tl.cos(phi)
        s = tl.sin(phi)
    return c, s


@triton.jit
def _dot(a, b, acc, F32: tl.constexpr, OP: tl.constexpr, PREC: tl.constexpr):
    """acc + a @ b, accumulated in float32. F32: float32 operands (PREC "ieee" is
    exact; "tf32x3" splits each operand into two tensor-float32 halves and keeps
    three products, to about 2^-21). Else operands cast to OP (bf16, fp16)."""
    if F32:
        a, b = a.to(tl.float32), b.to(tl.float32)
        return tl.dot(a, b, acc=acc, input_precision=PREC)
    else:
        return tl.dot(a.to(OP), b.to(OP), acc=acc)


@triton.jit
def _scalars(dt_ptr, A_ptr, lam_ptr, t, t_ok, first, L, H):
    """Per row of a chunk (rows,), float32: Δ, the log2 decay increment (on
    each token's first row only), γ = λ Δ, and the weight below the diagonal
    w = γ + (1 - λ_{t+1}) Δ_{t+1}, which looks one step ahead (0 at the end)."""
    o = t * H
    dt = tl.load(dt_ptr + o, mask=t_ok, other=0.0)
    a = tl.load(A_ptr + o, mask=t_ok, other=0.0) * dt * 1.4426950408889634
    a = tl.where(first, a, 0.0)
    lam = tl.load(lam_ptr + o, mask=t_ok, other=0.0)
    nxt = t_ok & (t + 1 < L)
    dt_n = tl.load(dt_ptr + o + H, mask=nxt, other=0.0)
    lam_n = tl.load(lam_ptr + o + H, mask=nxt, other=0.0)
    gamma = lam * dt
    return dt, a, gamma, gamma + (1.0 - lam_n) * dt_n


@triton.jit
def _angles(theta_ptr, dt, psi, t, t_ok, first, n, n_ok, H, N2, FAST: tl.constexpr):
    """cos Φ, sin Φ (rows, BLOCK_N2) for Φ = psi + the chunk's running sum of
    θ Δ (a token adds its increment once, on its first row); also θ, and the
    chunk's total angle (BLOCK_N2,). theta_ptr: this (batch, head)'s θ."""
    th = tl.load(theta_ptr + (t * (H * N2))[:, None] + n[None, :],
                 mask=t_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
    inc = tl.where(first[:, None], th * dt[:, None], 0.0)  # (rows, BLOCK_N2)
    cos, sin = _trig(psi[None, :] + tl.cumsum(inc, axis=0), FAST)
    return cos, sin, th, tl.sum(inc, axis=0)


@triton.jit
def _pairs(t, rank, row_ok, n, n_ok, G, R, N2):
    """Offsets (rows, BLOCK_N2) of the even entries of B_t, C_t within a
    (batch, group), and their mask."""
    src = (t * (G * R * 2 * N2) + rank * (2 * N2))[:, None] + 2 * n[None, :]
    return src, row_ok[:, None] & n_ok[None, :]


@triton.jit
def _turn(ptr, src, mask, cos, sin):
    """Rot(Φ) of the pairs (ptr[src], ptr[src + 1]): their even and odd
    entries after the turn, float32."""
    u = tl.load(ptr + src, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(ptr + src + 1, mask=mask, other=0.0).to(tl.float32)
    return u * cos - v * sin, u * sin + v * cos


@triton.jit
def _mamba3_fwd(
    x_ptr, dt_ptr, A_ptr, lam_ptr, theta_ptr, B_ptr, C_ptr, D_ptr, z_ptr,
    h0_ptr, psi0_ptr, y_ptr, hT_ptr, psiT_ptr, Sc_ptr, Pc_ptr,
    L, H, HPG, G, R, P, N2, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_H0: tl.constexpr,
    HAS_PSI0: tl.constexpr, STORE_FINAL: tl.constexpr, SAVE: tl.constexpr,
    F32: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr,
    BLOCK_T: tl.constexpr, RP: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N2: tl.constexpr,
):
    # x, z, y (b, L, H, R, P); dt, A, lam (b, L, H) float32; theta (b, L, H, N2);
    # B, C (b, L, G, R, 2 N2); D (H, P); h0, hT (b, H, P, 2 N2), psi0, psiT
    # (b, H, N2) float32. SAVE: Sc (b, H, n_chunks, P, 2 N2), the state entering
    # each chunk, and Pc (b, H, n_chunks, N2), its angle (for the backward pass).
    ROWS: tl.constexpr = BLOCK_T * RP
    OP = x_ptr.dtype.element_ty  # the products' operand dtype (unless F32)
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bi = pid_bh // H
    h = pid_bh % H
    g = h // HPG
    N = 2 * N2

    rows = tl.arange(0, ROWS)
    tok = rows // RP  # token of each row within the chunk
    rank = rows % RP
    first = rank == 0  # a token's first row carries its decay and angle
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N2)
    p_ok = p < P
    n_ok = n < N2
    st_mask = n_ok[:, None] & p_ok[None, :]
    st_off = p[None, :] * N + 2 * n[:, None]  # (BLOCK_N2, BLOCK_P): h[p, 2i]
    bh = pid_bh.to(tl.int64)
    if HAS_H0:  # Ŝ = hᵀ as its even and odd rows
        S_e = tl.load(h0_ptr + bh * P * N + st_off, mask=st_mask, other=0.0)
        S_o = tl.load(h0_ptr + bh * P * N + st_off + 1, mask=st_mask, other=0.0)
    else:
        S_e = tl.zeros([BLOCK_N2, BLOCK_P], dtype=tl.float32)
        S_o = tl.zeros([BLOCK_N2, BLOCK_P], dtype=tl.float32)
    if HAS_PSI0:  # Ψ: the angle before the chunk
        psi = tl.load(psi0_ptr + bh * N2 + n, mask=n_ok, other=0.0)
    else:
        psi = tl.zeros([BLOCK_N2], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + h * P + p, mask=p_ok, other=0.0)  # (BLOCK_P,)
    ti = tok[:, None]
    tj = tok[None, :]
    causal = ti >= tj
    below = ti > tj
    # 64-bit bases per (batch, head), 32-bit offsets inside
    x_ptr += (bi.to(tl.int64) * L * H + h) * R * P
    y_ptr += (bi.to(tl.int64) * L * H + h) * R * P
    if HAS_Z:
        z_ptr += (bi.to(tl.int64) * L * H + h) * R * P
    dt_ptr += bi.to(tl.int64) * L * H + h
    A_ptr += bi.to(tl.int64) * L * H + h
    lam_ptr += bi.to(tl.int64) * L * H + h
    theta_ptr += (bi.to(tl.int64) * L * H + h) * N2
    B_ptr += (bi.to(tl.int64) * L * G + g) * R * N
    C_ptr += (bi.to(tl.int64) * L * G + g) * R * N

    for c in range(0, n_chunks):
        t = c * BLOCK_T + tok  # (ROWS,)
        t_ok = t < L
        row_ok = t_ok & (rank < R)
        if SAVE:  # the state entering the chunk and its angle
            so = (bh * n_chunks + c) * P * N
            Sty = Sc_ptr.dtype.element_ty
            tl.store(Sc_ptr + so + st_off, S_e.to(Sty), mask=st_mask)
            tl.store(Sc_ptr + so + st_off + 1, S_o.to(Sty), mask=st_mask)
            if pid_p == 0:
                tl.store(Pc_ptr + (bh * n_chunks + c) * N2 + n, psi, mask=n_ok)
        dt, a, gamma, wgt = _scalars(dt_ptr, A_ptr, lam_ptr, t, t_ok, first, L, H)
        a_cum = tl.cumsum(a, axis=0)  # (ROWS,) log2 decay from the chunk's start
        a_end = tl.sum(a, axis=0)
        cos, sin, _th, delta = _angles(theta_ptr, dt, psi, t, t_ok, first, n, n_ok,
                                       H, N2, FAST)
        src, rn_mask = _pairs(t, rank, row_ok, n, n_ok, G, R, N2)
        k_e, k_o = _turn(B_ptr, src, rn_mask, cos, sin)  # k̂ (ROWS, BLOCK_N2)
        q_e, q_o = _turn(C_ptr, src, rn_mask, cos, sin)  # q̂
        psi = psi + delta
        psi = psi - 6.283185307179586 * tl.floor(psi * 0.15915494309189535)
        if not F32:  # the products' operands, at half the registers
            k_e, k_o, q_e, q_o = k_e.to(OP), k_o.to(OP), q_e.to(OP), q_o.to(OP)

        xo = (t * (H * R * P) + rank * P)[:, None] + p[None, :]  # (ROWS, BLOCK_P)
        rp_mask = row_ok[:, None] & p_ok[None, :]
        xv = tl.load(x_ptr + xo, mask=rp_mask, other=0.0)
        # the state carried in, read out: exp2(a⁺_t) q̂_t Ŝ
        y = tl.zeros([ROWS, BLOCK_P], dtype=tl.float32)
        y = _dot(q_e, S_e, y, F32, OP, PREC)
        y = _dot(q_o, S_o, y, F32, OP, PREC) * tl.exp2(a_cum)[:, None]
        # inside the chunk: (q̂ k̂ᵀ ∘ decay ∘ w) x, w = γ on the diagonal
        s = tl.zeros([ROWS, ROWS], dtype=tl.float32)
        s = _dot(q_e, tl.trans(k_e), s, F32, OP, PREC)
        s = _dot(q_o, tl.trans(k_o), s, F32, OP, PREC)
        w = tl.where(below, wgt[None, :], gamma[None, :])
        decay = tl.exp2(tl.minimum(a_cum[:, None] - a_cum[None, :], 0.0))
        s = tl.where(causal, s * w * decay, 0.0)
        y = _dot(s, xv, y, F32, OP, PREC)
        if HAS_D:
            y += Dv[None, :] * xv.to(tl.float32)
        if HAS_Z:
            zv = tl.load(z_ptr + xo, mask=rp_mask, other=0.0).to(tl.float32)
            y = y * zv * tl.sigmoid(zv)
        tl.store(y_ptr + xo, y.to(y_ptr.dtype.element_ty), mask=rp_mask)
        # the state leaving the chunk; w folds in the next chunk's first β-term
        u = tl.exp2(a_end - a_cum) * wgt  # (ROWS,)
        keep = tl.exp2(a_end)
        S_e = _dot(tl.trans(k_e.to(tl.float32) * u[:, None]), xv, S_e * keep,
                   F32, OP, PREC)
        S_o = _dot(tl.trans(k_o.to(tl.float32) * u[:, None]), xv, S_o * keep,
                   F32, OP, PREC)

    if STORE_FINAL:
        tl.store(hT_ptr + bh * P * N + st_off, S_e, mask=st_mask)
        tl.store(hT_ptr + bh * P * N + st_off + 1, S_o, mask=st_mask)
        if pid_p == 0:
            tl.store(psiT_ptr + bh * N2 + n, psi, mask=n_ok)


def _rows(chunk_size, RP, max_rows):
    """Tokens per chunk: next_pow2(chunk_size), so that rows = tokens x RP is in [16, max_rows]."""
    tokens = min(next_pow2(chunk_size), max(1, max_rows // RP))
    return max(tokens, -(-16 // RP))


def precision(x, lowp=True, f32_precision=None):
    """(F32, PREC): whether the products take float32 operands, and their input_precision."""
    f32 = interpreting() or x.dtype == torch.float32 or not lowp
    return f32, (f32_precision or F32_PRECISION)


def launch_config(x, N, chunk_size, R, block_p=None, max_rows=None, num_warps=None, num_stages=None,
                  fast_trig=None, lowp=True, f32_precision=None, **_backward_knobs):
    """Block sizes and launch options shared by the forward and backward launchers.

    Returns (dict(BLOCK_T, RP, BLOCK_P, BLOCK_N2, F32, PREC, FAST), n_chunks, the launch kwargs).
    """
    b, L, H, _, P = x.shape
    interp = interpreting()
    RP = next_pow2(R)
    BLOCK_T = _rows(chunk_size, RP, max_rows or MAX_ROWS)
    f32, prec = precision(x, lowp, f32_precision)
    meta = dict(BLOCK_T=BLOCK_T, RP=RP, BLOCK_N2=max(16, next_pow2(N // 2)), F32=f32, PREC=prec,
                FAST=bool((not f32) if fast_trig is None else fast_trig) and not interp)
    meta["BLOCK_P"] = max(16, min(next_pow2(P), block_p or BLOCK_P_MAX))
    extra = {} if interp else dict(num_warps=num_warps or NUM_WARPS, num_stages=num_stages or NUM_STAGES)
    return meta, triton.cdiv(L, BLOCK_T), extra


def mamba3_fwd(x, dt, A, B, C, lam, theta, D=None, z=None, h0=None, psi0=None, chunk_size=64,
               return_final_state=False, save=False, **knobs):
    """Launch the forward kernel. Shapes as ``mamba3`` with the rank axis present:
    x, z (b, L, H, R, P); B, C (b, L, G, R, N); dt, A, lam (b, L, H); theta (b, L, H, N/2);
    D (H,) or (H, P); h0 (b, H, P, N) float32, the state before step 0 with step 0's β-term folded in
    (``ssm_edu.mamba3._carried_in``); psi0 (b, H, N/2) float32, the angle Φ_{-1}.

    Returns (y, hT, psiT, saved): y like x; hT (b, H, P, N) and psiT (b, H, N/2) float32 when
    ``return_final_state`` (else None); saved = (Sc, Pc, meta) when ``save`` (else None).
    ``knobs`` (benchmarks and tests): block_p, max_rows, num_warps, num_stages, fast_trig, lowp.
    """
    if x.dtype not in _SUPPORTED:
        raise ValueError(f"mamba3(impl='triton') supports float32, bfloat16 and float16 x; got {x.dtype}")
    out_dtype = x.dtype
    if interpreting() and x.dtype != torch.float32:  # the interpreter computes in float32 only
        x, B, C, theta = (t.float() for t in (x, B, C, theta))
        z = None if z is None else z.float()
    b, L, H, R, P = x.shape
    G, N = B.shape[2], B.shape[-1]
    N2 = N // 2
    meta, n_chunks, extra = launch_config(x, N, chunk_size, R, **knobs)
    if meta["F32"] and x.dtype != torch.float32:  # exact products asked for low-precision inputs
        x, B, C, theta = (t.float() for t in (x, B, C, theta))
        z = None if z is None else z.float()
    x, B, C, theta = (t.contiguous() for t in (x, B, C, theta))
    B, C = B.to(x.dtype), C.to(x.dtype)
    dt, A, lam = (t.float().contiguous() for t in (dt, A, lam))
    z = None if z is None else z.to(x.dtype).contiguous()
    if D is not None:
        D = (D[:, None] if D.dim() == 1 else D).float().expand(H, P).contiguous()  # (H, P)
    h0 = None if h0 is None else h0.float().contiguous()
    psi0 = None if psi0 is None else psi0.float().contiguous()
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    f32 = dict(device=x.device, dtype=torch.float32)
    hT = torch.empty(b, H, P, N, **f32) if return_final_state else None
    psiT = torch.empty(b, H, N2, **f32) if return_final_state else None
    Sc = torch.empty(b, H, n_chunks, P, N, device=x.device, dtype=x.dtype) if save else None
    Pc = torch.empty(b, H, n_chunks, N2, **f32) if save else None
    d = x  # any tensor, for the pointers a kernel does not use
    _mamba3_fwd[(triton.cdiv(P, meta["BLOCK_P"]), b * H)](
        x, dt, A, lam, theta, B, C, d if D is None else D, d if z is None else z, d if h0 is None else h0,
        d if psi0 is None else psi0, y, d if hT is None else hT, d if psiT is None else psiT,
        d if Sc is None else Sc, d if Pc is None else Pc,
        L, H, H // G, G, R, P, N2, n_chunks,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_H0=h0 is not None, HAS_PSI0=psi0 is not None,
        STORE_FINAL=bool(return_final_state), SAVE=bool(save), **meta, **extra,
    )
    saved = (Sc, Pc, dict(meta, n_chunks=n_chunks, chunk_size=chunk_size, knobs=knobs)) if save else None
    return y.to(out_dtype), hT, psiT, saved


_NAMES = ("x", "dt", "A", "B", "C", "lam", "theta", "D", "z", "h0", "psi0")


class _Mamba3Core(torch.autograd.Function):
    """(x, dt, A, B, C, lam, theta, D, z, h0, psi0) -> (y, hT, psiT), forward and backward in Triton.

    h0 is the state before step 0 with step 0's β-term already folded in, psi0 the angle Φ_{-1};
    the wrapper ``mamba3_core`` builds them from a ``Mamba3State`` with differentiable PyTorch code.
    """

    @staticmethod
    def forward(ctx, chunk_size, knobs, *tensors):
        from .mamba3_bwd import training_knobs

        kw = dict(zip(_NAMES, tensors))
        y, hT, psiT, saved = mamba3_fwd(chunk_size=chunk_size, return_final_state=True, save=True, **kw,
                                        **training_knobs(knobs))
        ctx.save_for_backward(*tensors, saved[0], saved[1], hT)
        ctx.meta = dict(saved[2], knobs=knobs)
        ctx.set_materialize_grads(False)
        return y, hT, psiT

    @staticmethod
    def backward(ctx, gy, ghT, gpsiT):
        from .mamba3_bwd import mamba3_bwd

        *tensors, Sc, Pc, hT = ctx.saved_tensors
        kw = dict(zip(_NAMES, tensors))
        grads = mamba3_bwd(gy, ghT, gpsiT, Sc, Pc, hT, ctx.meta, **kw)
        needs = ctx.needs_input_grad[2:]
        out = []
        for name, t, nd in zip(_NAMES, tensors, needs):
            g = grads.get(name) if nd else None
            out.append(None if g is None or t is None else g.to(t.dtype).reshape(t.shape))
        return (None, None, *out)


def mamba3_core(x, dt, A, B, C, lam, theta, D=None, z=None, h0=None, psi0=None, chunk_size=64, **knobs):
    """The kernel's own operation, differentiable: ranked shapes, h0 with the β-term folded in.

    Returns (y, hT, psiT) (hT, psiT float32). With nothing requiring a gradient it only runs the forward.
    """
    tensors = (x, dt, A, B, C, lam, theta, D, z, h0, psi0)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _Mamba3Core.apply(chunk_size, knobs, *tensors)
    y, hT, psiT, _ = mamba3_fwd(*tensors, chunk_size=chunk_size, return_final_state=True, **knobs)
    return y, hT, psiT


def mamba3_triton(x, dt, A, B, C, lam, theta, D=None, z=None, chunk_size=64, initial_state=None,
                  return_final_state=False, path=None, rotate=None, fused_rotation=None, **knobs):
    """The scan in Triton (see the module docstring); arguments as ``ssm_edu.mamba3``.

    x, B, C, theta, z float32, bfloat16 or float16 (y in x's dtype); the final
    state (h, angle, k, x) in float32. Differentiable in every tensor argument,
    the initial state included (the backward pass is ``kernels/mamba3_bwd.py``).
    ``path``: ``"fused"`` or ``"ssd"`` (``kernels/mamba3_ssd.py``, SISO float32
    and bfloat16 only; other inputs take the fused kernel); ``SISO_PATH`` by default. ``rotate``: that
    path's rotation, "walk", "tiles" or "joined" (``kernels/mamba3_ssd.py``'s ``ROTATE`` by default), or a
    dict with "form" and its backward's launch options "bwd_heads", "bwd_stages" (``mamba3_ssd._form``);
    ``fused_rotation``: that path's forward with the rotation inside the chunk walk (its ``FUSED_ROTATION`` by
    default).
    """
    from ssm_edu.mamba3 import Mamba3State, _carried_in, _heads, _ranked, _start, rotate_pairs

    from . import mamba3_ssd

    path = path or SISO_PATH
    if path not in ("fused", "ssd"):
        raise ValueError(f"mamba3_triton: path must be 'fused' or 'ssd'; got {path!r}")
    if path == "ssd" and mamba3_ssd.supported(x) and not knobs:
        return mamba3_ssd.mamba3_ssd(x, dt, A, B, C, lam, theta, D=D, z=z, chunk_size=chunk_size,
                                     initial_state=initial_state, return_final_state=return_final_state,
                                     rotate=rotate, fused_rotation=fused_rotation)

    xr, Br, Cr, zr, siso = _ranked(x, B, C, z)
    h0 = psi0 = None
    if isinstance(initial_state, torch.Tensor):
        h0 = initial_state.float()
    elif initial_state is not None:  # h_{-1} plus the β-term of step 0, in differentiable PyTorch
        h_, angle0, kp, xp = (t.float() for t in _start(initial_state, xr, B.shape[-1]))
        h0 = _carried_in(h_, xp, kp, dt.float(), lam.float())
        psi0 = angle0
    y, hT, psiT = mamba3_core(xr, dt, A, Br, Cr, lam, theta, D, zr, h0, psi0, chunk_size=chunk_size, **knobs)
    y = y[:, :, :, 0] if siso else y
    if not return_final_state:
        return y
    # k_{L-1} = Rot(Φ_{L-1}) B_{L-1} and x_{L-1}: the next call's β-term
    k = rotate_pairs(_heads(Br[:, -1:], x.shape[2])[:, 0].float(), psiT[:, :, None])  # (b, H, R, N)
    xl = xr[:, -1].to(torch.float32, copy=True)  # (b, H, R, P); a copy, never a view of an input
    if siso:
        k, xl = k[:, :, 0], xl[:, :, 0]
    return y, Mamba3State(hT, psiT, k, xl)
