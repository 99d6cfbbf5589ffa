"""Triton Mamba-3 decoding step (chapter 9): one token through the recurrence, SISO or MIMO.

    Φ_t = Φ_{t-1} + θ_t Δ_t,   k_{t,r} = Rot(Φ_t) B_{t,r},   q_{t,r} = Rot(Φ_t) C_{t,r}
    h_t = α_t h_{t-1} + β_t Σ_r x_{t-1,r} k_{t-1,r}ᵀ + γ_t Σ_r x_{t,r} k_{t,r}ᵀ
    y_{t,r} = h_t q_{t,r} + D x_{t,r}   (then ⊙ SiLU(z))

Work split. One program per (batch, head, block of BLOCK_P rows of the state). It loads its state
tile (BLOCK_P, N) as contiguous rows, split into even and odd columns in registers, the head's
angles, the previous k and x (the cache), this token's x, B, C, Δ, A, λ, θ; turns B and C, updates
the tile, reads it out with each rank's query, and writes the new tile, angle and k. The R ranks
are a loop of rank-1 updates on the same tile: the state is read and written once whatever R is.

What moves through memory. The state, read once and written once (float32: 8 P N bytes per head);
everything else is N or P numbers per rank. So a step is bound by memory bandwidth, and MIMO's R
outer products and R readouts are arithmetic on a tile that is already in registers: about 2 + 6R
operations per state entry for 8 bytes, so an intensity of (2 + 6R) / 8 per byte, far below what
the GPU could sustain. The floor is 8 b H P N bytes at the HBM rate.

Precision: float32 arithmetic and state; x, B, C, z in any float dtype, y in x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import interpreting, next_pow2
from ._pairs import pairs_at, put_pairs

__all__ = ["mamba3_step_triton", "step_launch_config"]

BLOCK_P_MAX = 16  # rows of the state per program: small, so that a batch of one still fills the GPU
NUM_WARPS = 4
# The state tile read and written as contiguous rows (``_mamba3_step``'s JOINED), not as even and odd columns
# apart. On an H200 (2026-12-07, bf16, H32 P64 N128, CUDA graphs) at a batch of 64: 46.7 us against 159.3 us at
# R = 1 (70% of the memory floor against 21%), 99.6 against 302.2 us at R = 4; at a batch of 1, 6.8 against 9.7 us.
JOINED = True


@triton.jit
def _mamba3_step(
    h_ptr, angle_ptr, kp_ptr, xp_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, lam_ptr, theta_ptr, D_ptr, z_ptr,
    y_ptr, h_out_ptr, angle_out_ptr, k_out_ptr,
    H, HPG, G, P, N2,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N2: tl.constexpr,
    JOINED: tl.constexpr = False,
):
    # JOINED: the state tile read and written as contiguous rows of N, split into even and odd columns in
    # registers (kernels/_pairs.py), instead of the even and the odd columns apart
    # h, h_out (b, H, P, 2 N2) float32; angle, angle_out (b, H, N2); kp, k_out (b, H, R, 2 N2);
    # xp, x, z, y (b, H, R, P); dt, A, lam (b, H); B, C (b, G, R, 2 N2); theta (b, H, N2); D (H, P).
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bh = pid_bh.to(tl.int64)
    h = pid_bh % H
    bg = (pid_bh // H).to(tl.int64) * G + h // HPG
    N = 2 * N2
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N2)
    p_ok = p < P
    n_ok = n < N2
    mask = p_ok[:, None] & n_ok[None, :]
    dt = tl.load(dt_ptr + bh)
    alpha = tl.exp(dt * tl.load(A_ptr + bh))
    lam = tl.load(lam_ptr + bh)
    beta = (1.0 - lam) * dt * alpha
    gamma = lam * dt
    angle = tl.load(angle_ptr + bh * N2 + n, mask=n_ok, other=0.0) + dt * tl.load(theta_ptr + bh * N2 + n,
                                                                                  mask=n_ok, other=0.0)
    cos = tl.cos(angle)
    sin = tl.sin(angle)
    rows = bh * P * N + p * N  # this tile's rows of the state
    h_e, h_o = pairs_at(h_ptr, rows, p_ok, 0, n, mask, N, JOINED, BLOCK_P, BLOCK_N2)
    h_e, h_o = alpha * h_e, alpha * h_o
    for r in tl.static_range(R):  # Σ_r: the previous token's β-term and this token's γ-term
        kv = (bh * R + r) * N + 2 * n
        xr = (bh * R + r) * P + p
        bc = (bg * R + r) * N + 2 * n
        u = tl.load(B_ptr + bc, mask=n_ok, other=0.0).to(tl.float32)
        v = tl.load(B_ptr + bc + 1, mask=n_ok, other=0.0).to(tl.float32)
        k_e = u * cos - v * sin
        k_o = u * sin + v * cos
        xp = beta * tl.load(xp_ptr + xr, mask=p_ok, other=0.0).to(tl.float32)
        xt = gamma * tl.load(x_ptr + xr, mask=p_ok, other=0.0).to(tl.float32)
        h_e += xp[:, None] * tl.load(kp_ptr + kv, mask=n_ok, other=0.0)[None, :] + xt[:, None] * k_e[None, :]
        h_o += xp[:, None] * tl.load(kp_ptr + kv + 1, mask=n_ok, other=0.0)[None, :] + xt[:, None] * k_o[None, :]
        if pid_p == 0:
            tl.store(k_out_ptr + kv, k_e, mask=n_ok)
            tl.store(k_out_ptr + kv + 1, k_o, mask=n_ok)
    put_pairs(h_out_ptr, rows, p_ok, 0, n, mask, N, h_e, h_o, JOINED, False, BLOCK_P, BLOCK_N2)
    if HAS_D:
        Dv = tl.load(D_ptr + h * P + p, mask=p_ok, other=0.0)
    for r in tl.static_range(R):  # each rank reads the new state with its own query
        xr = (bh * R + r) * P + p
        bc = (bg * R + r) * N + 2 * n
        u = tl.load(C_ptr + bc, mask=n_ok, other=0.0).to(tl.float32)
        v = tl.load(C_ptr + bc + 1, mask=n_ok, other=0.0).to(tl.float32)
        y = tl.sum(h_e * (u * cos - v * sin)[None, :] + h_o * (u * sin + v * cos)[None, :], axis=1)
        if HAS_D:
            y += Dv * tl.load(x_ptr + xr, mask=p_ok, other=0.0).to(tl.float32)
        if HAS_Z:
            zv = tl.load(z_ptr + xr, mask=p_ok, other=0.0).to(tl.float32)
            y = y * zv * tl.sigmoid(zv)
        tl.store(y_ptr + xr, y.to(y_ptr.dtype.element_ty), mask=p_ok)
    if pid_p == 0:
        angle = angle - 6.283185307179586 * tl.floor(angle * 0.15915494309189535)  # in [0, 2π)
        tl.store(angle_out_ptr + bh * N2 + n, angle, mask=n_ok)


def step_launch_config(P, N, R, programs_bh, block_p=None, num_warps=None, joined=None):
    """Block sizes and the state's access (``joined``, ``JOINED`` by default): (meta, launch extras)."""
    meta = dict(R=R, BLOCK_P=max(2, min(next_pow2(P), block_p or BLOCK_P_MAX)), BLOCK_N2=max(2, next_pow2(N // 2)),
                JOINED=JOINED if joined is None else bool(joined))
    extra = {} if interpreting() else dict(num_warps=num_warps or NUM_WARPS)
    return meta, extra


def mamba3_step_triton(state, x, dt, A, B, C, lam, theta, D=None, z=None, **knobs):
    """One decoding step in Triton; arguments and result as ``ssm_edu.mamba3_step`` (validated there).

    state: a ``Mamba3State`` or None; x (b, H, P) or (b, H, R, P) in float32 / bfloat16 / float16.
    Returns (y like x, the new ``Mamba3State`` in float32). ``knobs``: block_p, num_warps, joined.
    """
    from ssm_edu.mamba3 import Mamba3State

    siso = x.dim() == 3
    if siso:
        x, B, C = x[:, :, None], B[:, :, None], C[:, :, None]
        z = None if z is None else z[:, :, None]
    b, H, R, P = x.shape
    G, N = B.shape[1], B.shape[-1]
    dev = x.device
    if state is None:
        state = Mamba3State.zeros(b, H, P, N, R, device=dev)
    h0, angle, kp, xp = state
    if kp.dim() == 3:  # SISO cache
        kp, xp = kp[:, :, None], xp[:, :, None]
    f32 = lambda t: t.float().contiguous()  # noqa: E731
    interp = interpreting()
    low = (lambda t: t.float().contiguous()) if interp else (lambda t: t.contiguous())  # noqa: E731
    xw, Bw, Cw = low(x), low(B), low(C)
    zw = None if z is None else low(z)
    h0, angle, kp, xp = f32(h0), f32(angle), f32(kp), low(xp)
    dtw, Aw, lamw, thw = f32(dt), f32(A), f32(lam), f32(theta)
    Dw = None if D is None else (D[:, None] if D.dim() == 1 else D).float().expand(H, P).contiguous()
    meta, extra = step_launch_config(P, N, R, b * H, **knobs)
    y = torch.empty(x.shape, device=dev, dtype=xw.dtype)
    h_new = torch.empty_like(h0)
    angle_new = torch.empty_like(angle)
    k_new = torch.empty(b, H, R, N, device=dev, dtype=torch.float32)
    d = h0
    _mamba3_step[(triton.cdiv(P, meta["BLOCK_P"]), b * H)](
        h0, angle, kp, xp, xw, dtw, Aw, Bw, Cw, lamw, thw, d if Dw is None else Dw, d if zw is None else zw,
        y, h_new, angle_new, k_new, H, H // G, G, P, N // 2,
        HAS_D=D is not None, HAS_Z=z is not None, **meta, **extra,
    )
    y = y.to(x.dtype)
    x_new = x.to(torch.float32, copy=True)
    if siso:
        return y[:, :, 0], Mamba3State(h_new, angle_new, k_new[:, :, 0], x_new[:, :, 0])
    return y, Mamba3State(h_new, angle_new, k_new, x_new)
