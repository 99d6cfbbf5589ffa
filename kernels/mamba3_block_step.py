"""The Mamba-3 block's decoding step in one Triton kernel (chapters 9 and 10): from in_proj's row to y.

At a batch of one a decoding step is bound by launches, not bytes (chapter 10): the block's step as
written in PyTorch (``Mamba3.step``: ``ssm_inputs``, then ``mamba3_step``, then the cache copies)
issues some fifty small kernels per layer, each moving a few hundred bytes. This kernel does all of
it between the two projections, for SISO heads:

    [z, x, B, C, dd_dt, dd_A, trap, θ] = the row of in_proj(u) (read once)
    Δ = softplus(dd_dt + dt_bias),  A = -max(f(dd_A), A_floor),  λ = sigmoid(trap)
    B = RMSNorm_N(B_g) + B_bias_h,  C likewise,  ω = π tanh(θ) on the first S pairs
    Φ = Φ_prev + Δ ω,  k = Rot(Φ) B,  q = Rot(Φ) C
    h = α h + β x_prev k_prevᵀ + γ x kᵀ,  y = (h q + D x) ⊙ SiLU(z)

and writes the new h, Φ (mod 2π), k and x into the cache's own tensors, in place: a CUDA graph of
the step then reads and writes the same addresses at every token, with no copies.

Work split: one program per (batch, head), the whole P x N state in registers (as even and odd
columns, (P, N/2) each). One program per head, not per block of rows, because the program that
writes the head's Φ, k and x must be the only one that reads them; within the program a barrier
separates the reads of the cache from the writes.

Precision: float32 arithmetic and cache, whatever the projection's dtype (the PyTorch step computes
Δ, A, λ and the norms in the model's dtype: in bfloat16 the two differ by bfloat16 roundings).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import interpreting, next_pow2
from .selective import _softplus

__all__ = ["mamba3_block_step", "supported"]


@triton.jit
def _rms_pairs(ptr, wt_ptr, bias_ptr, n, n_ok, N, eps):
    """RMSNorm over the N entries read as even and odd halves, times the norm's weight, plus the head's bias."""
    e = tl.load(ptr + 2 * n, mask=n_ok, other=0.0).to(tl.float32)
    o = tl.load(ptr + 2 * n + 1, mask=n_ok, other=0.0).to(tl.float32)
    scale = 1.0 / tl.sqrt((tl.sum(e * e, axis=0) + tl.sum(o * o, axis=0)) / N + eps)
    e = e * scale * tl.load(wt_ptr + 2 * n, mask=n_ok, other=0.0).to(tl.float32)
    o = o * scale * tl.load(wt_ptr + 2 * n + 1, mask=n_ok, other=0.0).to(tl.float32)
    e += tl.load(bias_ptr + 2 * n, mask=n_ok, other=0.0).to(tl.float32)
    o += tl.load(bias_ptr + 2 * n + 1, mask=n_ok, other=0.0).to(tl.float32)
    return e, o


@triton.jit
def _mamba3_block_step(
    proj_ptr, dt_bias_ptr, bw_ptr, cw_ptr, bb_ptr, cb_ptr, D_ptr,
    h_ptr, angle_ptr, k_ptr, xc_ptr, y_ptr,
    stride_b, H, HPG, G, P, N2, S, eps, A_floor,
    HEAVY_TAIL: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N2: tl.constexpr,
):
    pid = tl.program_id(0)  # batch * H + head
    bi, h = pid // H, pid % H
    g = h // HPG
    N = 2 * N2
    d_inner = H * P
    row = proj_ptr + bi.to(tl.int64) * stride_b  # [z, x, B, C, dd_dt, dd_A, trap, θ]
    o_B = 2 * d_inner
    o_dt = o_B + 2 * G * N
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N2)
    p_ok = p < P
    n_ok = n < N2
    mask = p_ok[:, None] & n_ok[None, :]

    # the head's scalars: Δ, A, λ and the trapezoid's weights
    dt = _softplus(tl.load(row + o_dt + h).to(tl.float32) + tl.load(dt_bias_ptr + h).to(tl.float32))
    v = tl.load(row + o_dt + H + h).to(tl.float32)
    if HEAVY_TAIL:
        f = tl.where(v >= 0, 1.0 + tl.maximum(v, 0.0), 1.0 / (1.0 - tl.minimum(v, 0.0)))
    else:
        f = _softplus(v)
    A = -tl.maximum(f, A_floor)
    lam = tl.sigmoid(tl.load(row + o_dt + 2 * H + h).to(tl.float32))
    alpha = tl.exp(dt * A)
    beta = (1.0 - lam) * dt * alpha
    gamma = lam * dt

    # angles: ω = π tanh(θ) on the first S pairs (shared by the heads), Φ = Φ_prev + Δ ω
    rot = n_ok & (n < S)
    th = tl.load(row + o_dt + 3 * H + n, mask=rot, other=0.0).to(tl.float32)
    e2 = tl.exp(-2.0 * tl.abs(th))
    rate = tl.where(rot, 3.141592653589793 * tl.where(th < 0, -1.0, 1.0) * (1.0 - e2) / (1.0 + e2), 0.0)
    angle = tl.load(angle_ptr + pid * N2 + n, mask=n_ok, other=0.0) + dt * rate
    cs, sn = tl.cos(angle), tl.sin(angle)

    # B and C of this head: normalised, biased, turned
    be, bo = _rms_pairs(row + o_B + g * N, bw_ptr, bb_ptr + h * N, n, n_ok, N, eps)
    ce, co = _rms_pairs(row + o_B + G * N + g * N, cw_ptr, cb_ptr + h * N, n, n_ok, N, eps)
    k_e, k_o = be * cs - bo * sn, be * sn + bo * cs
    q_e, q_o = ce * cs - co * sn, ce * sn + co * cs

    # the state update and the read-out
    x = tl.load(row + d_inner + h * P + p, mask=p_ok, other=0.0).to(tl.float32)
    z = tl.load(row + h * P + p, mask=p_ok, other=0.0).to(tl.float32)
    xp = beta * tl.load(xc_ptr + pid * P + p, mask=p_ok, other=0.0)
    kp_e = tl.load(k_ptr + pid * N + 2 * n, mask=n_ok, other=0.0)
    kp_o = tl.load(k_ptr + pid * N + 2 * n + 1, mask=n_ok, other=0.0)
    off = (pid.to(tl.int64) * P + p[:, None]) * N + 2 * n[None, :]
    xg = gamma * x
    h_e = alpha * tl.load(h_ptr + off, mask=mask, other=0.0) + xp[:, None] * kp_e[None, :] + xg[:, None] * k_e[None, :]
    h_o = alpha * tl.load(h_ptr + off + 1, mask=mask, other=0.0) + xp[:, None] * kp_o[None, :] + xg[:, None] * k_o[None, :]
    y = tl.sum(h_e * q_e[None, :] + h_o * q_o[None, :], axis=1) + tl.load(D_ptr + h).to(tl.float32) * x
    y = y * z * tl.sigmoid(z)

    tl.debug_barrier()  # every read of the cache above happens before the writes below
    tl.store(h_ptr + off, h_e, mask=mask)
    tl.store(h_ptr + off + 1, h_o, mask=mask)
    tl.store(k_ptr + pid * N + 2 * n, k_e, mask=n_ok)
    tl.store(k_ptr + pid * N + 2 * n + 1, k_o, mask=n_ok)
    tl.store(angle_ptr + pid * N2 + n, angle - 6.283185307179586 * tl.floor(angle * 0.15915494309189535), mask=n_ok)
    tl.store(xc_ptr + pid * P + p, x, mask=p_ok)
    tl.store(y_ptr + pid * P + p, y.to(y_ptr.dtype.element_ty), mask=p_ok)


def supported(block, proj, state) -> bool:
    """Whether the fused step takes this block and cache: CUDA tensors (or the interpreter), SISO, a float32 cache with contiguous tensors, a
    projection in float32 / bfloat16 / float16, and the state size the kernel's one-program tiles allow."""
    return ((proj.is_cuda or interpreting())  # compiled kernels read CUDA memory only
            and not block.mimo and proj.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and all(t.dtype == torch.float32 and t.is_contiguous() for t in state)
            and block.headdim * block.d_state <= 128 * 256)


def mamba3_block_step(block, proj, state):
    """One SISO decoding step of ``block`` (an ``ssm_edu.mamba3_block.Mamba3``) from ``proj`` = in_proj(u).

    proj (b, d_proj) (its last dimension contiguous); state: the cache's ``Mamba3State`` (float32),
    advanced in place. Returns y (b, H, P) in proj's dtype, gated (``Mamba3._out`` takes it from there).
    """
    if not supported(block, proj, state):
        raise ValueError("mamba3_block_step: SISO blocks with a float32, contiguous cache only")
    b = proj.shape[0]
    H, P, N, G = block.nheads, block.headdim, block.d_state, block.ngroups
    if proj.stride(-1) != 1:
        proj = proj.contiguous()
    h, angle, k, xc = state
    y = torch.empty(b, H, P, device=proj.device, dtype=proj.dtype)
    BLOCK_P, BLOCK_N2 = max(2, next_pow2(P)), max(2, next_pow2(N // 2))
    extra = {} if interpreting() else dict(num_warps=4 if P * N <= 64 * 128 else 8)
    _mamba3_block_step[(b * H,)](
        proj, block.dt_bias, block.B_norm.weight, block.C_norm.weight, block.B_bias, block.C_bias, block.D,
        h, angle, k, xc, y,
        proj.stride(0), H, H // G, G, P, N // 2, block.n_angles, block.B_norm.eps, block.A_floor,
        HEAVY_TAIL=block.A_activation == "heavy_tail", BLOCK_P=BLOCK_P, BLOCK_N2=BLOCK_N2, **extra,
    )
    return y
