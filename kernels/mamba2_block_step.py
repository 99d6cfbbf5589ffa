"""The Mamba-2 block's decoding step in three Triton kernels (chapters 8 and 10): from in_proj's row to the
normalised y that out_proj reads.

The block's step in PyTorch (``Mamba2.step``) launches about twenty small kernels between its two
projections: the conv window's shift, the depthwise conv, its bias and SiLU, the splits, Δ's softplus,
A = -exp(A_log), the state update, the gate and the gated RMSNorm. At a batch of one each costs a
launch and moves a few kilobytes (chapter 10). Here:

1. ``_conv_step``, one program per (batch, block of conv channels): the window of each channel drops
   its oldest input and takes the newest (in place), and the channel's output
   SiLU(Σ_j w_j window_j + bias) goes to a small float32 buffer, [x, B, C] for the next kernel.
2. ``_ssm_step``, one program per (batch, head): Δ = softplus(dt + dt_bias), A = -exp(A_log),
   h = e^{ΔA} h + Δ x Bᵀ in place (float32), y = h C + D x, gated by SiLU(z); it writes y ⊙ SiLU(z)
   and the head's sum of squares.
3. ``_gated_norm``, one program per (batch, group): the group's mean square from its heads' sums,
   then y ⊙ SiLU(z) / rms · weight in the model's dtype.

Three launches, not one: the conv window of B and C is shared by the heads of a group (the program
that shifts it must be the only one to read it), and the norm spans a group's heads. Each kernel's
work is a few kilobytes; at a batch of one the step is three launches where it was about twenty.

Precision: float32 arithmetic, state and buffers, whatever the model's dtype (the PyTorch step computes
the conv and the norm in the model's dtype: in bfloat16 the two differ by bfloat16 roundings).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import interpreting, next_pow2
from .selective import _softplus

__all__ = ["mamba2_block_step", "supported"]

BLOCK_C = 256  # conv channels per program


@triton.jit
def _conv_step(proj_ptr, conv_ptr, w_ptr, bias_ptr, act_ptr, stride_b, d_inner, conv_dim,
               W: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    bi = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    j = tl.arange(0, BLOCK_W)
    c_ok = c < conv_dim
    new = tl.load(proj_ptr + bi * stride_b + d_inner + c, mask=c_ok, other=0.0)
    win = conv_ptr + (bi * conv_dim + c)[:, None] * W + j[None, :]  # (b, conv_dim, W): oldest first
    keep = c_ok[:, None] & (j >= 1)[None, :] & (j < W)[None, :]  # the inputs that stay, one place earlier
    old = tl.load(win, mask=keep, other=0.0)
    # window after the shift: [old_1, ..., old_{W-1}, new]; weight j - 1 meets old_j, weight W - 1 the new input
    wts = tl.load(w_ptr + c[:, None] * W + j[None, :] - 1, mask=keep, other=0.0).to(tl.float32)
    acc = tl.sum(old.to(tl.float32) * wts, axis=1) + tl.load(bias_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    acc += new.to(tl.float32) * tl.load(w_ptr + c * W + (W - 1), mask=c_ok, other=0.0).to(tl.float32)
    tl.debug_barrier()  # the window is read whole before it is written
    tl.store(win - 1, old, mask=keep)
    tl.store(conv_ptr + (bi * conv_dim + c) * W + (W - 1), new.to(conv_ptr.dtype.element_ty), mask=c_ok)
    tl.store(act_ptr + bi * conv_dim + c, acc * tl.sigmoid(acc), mask=c_ok)


@triton.jit
def _ssm_step(proj_ptr, act_ptr, dt_bias_ptr, A_log_ptr, D_ptr, h_ptr, g_ptr, ss_ptr,
              stride_b, H, HPG, G, P, N, d_inner, conv_dim,
              BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)  # batch * H + head
    bi, h = (pid // H).to(tl.int64), pid % H
    g = h // HPG
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    p_ok, n_ok = p < P, n < N
    row = proj_ptr + bi * stride_b  # [z, xBC, dt]
    dt = _softplus(tl.load(row + d_inner + conv_dim + h).to(tl.float32) + tl.load(dt_bias_ptr + h).to(tl.float32))
    decay = tl.exp(-dt * tl.exp(tl.load(A_log_ptr + h).to(tl.float32)))
    act = act_ptr + bi * conv_dim
    x = tl.load(act + h * P + p, mask=p_ok, other=0.0)
    B = tl.load(act + d_inner + g * N + n, mask=n_ok, other=0.0)
    C = tl.load(act + d_inner + G * N + g * N + n, mask=n_ok, other=0.0)
    off = (pid.to(tl.int64) * P + p[:, None]) * N + n[None, :]
    mask = p_ok[:, None] & n_ok[None, :]
    state = decay * tl.load(h_ptr + off, mask=mask, other=0.0) + (dt * x)[:, None] * B[None, :]
    tl.store(h_ptr + off, state, mask=mask)  # each program owns its (P, N) tile
    y = tl.sum(state * C[None, :], axis=1) + tl.load(D_ptr + h).to(tl.float32) * x
    z = tl.load(row + h * P + p, mask=p_ok, other=0.0).to(tl.float32)
    gy = y * z * tl.sigmoid(z)
    tl.store(g_ptr + bi * d_inner + h * P + p, gy, mask=p_ok)
    tl.store(ss_ptr + pid, tl.sum(tl.where(p_ok, gy * gy, 0.0), axis=0))


@triton.jit
def _gated_norm(g_ptr, ss_ptr, wt_ptr, out_ptr, H, HPG, G, d_inner, eps,
                BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr):
    pid = tl.program_id(0)  # batch * G + group
    bi, grp = (pid // G).to(tl.int64), pid % G
    heads = tl.arange(0, BLOCK_H)
    total = tl.sum(tl.load(ss_ptr + bi * H + grp * HPG + heads, mask=heads < HPG, other=0.0), axis=0)
    size = d_inner // G
    scale = 1.0 / tl.sqrt(total / size + eps)
    for start in range(0, size, BLOCK_S):
        c = start + tl.arange(0, BLOCK_S)
        ok = c < size
        ch = grp * size + c
        v = tl.load(g_ptr + bi * d_inner + ch, mask=ok, other=0.0) * scale
        v = v * tl.load(wt_ptr + ch, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + bi * d_inner + ch, v.to(out_ptr.dtype.element_ty), mask=ok)


def supported(block, proj, cache) -> bool:
    """Whether the fused step takes this block and cache: CUDA tensors (or the interpreter), a float32 state, contiguous caches, a projection
    in float32 / bfloat16 / float16, and a state tile the one-program-per-head kernel holds."""
    conv, ssm = cache["conv"], cache["ssm"]
    return ((proj.is_cuda or interpreting())  # compiled kernels read CUDA memory only
            and proj.dtype in (torch.float32, torch.bfloat16, torch.float16) and ssm.dtype == torch.float32
            and conv.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and conv.is_contiguous() and ssm.is_contiguous() and block.headdim * block.d_state <= 128 * 256)


def mamba2_block_step(block, proj, cache):
    """One decoding step of ``block`` (an ``ssm_edu.mamba2.Mamba2``) from ``proj`` = in_proj(u) (b, d_proj).

    Advances ``cache`` ("conv", "ssm") in place and returns the normalised, gated y (b, Din) in proj's
    dtype: what ``block.out_proj`` reads.
    """
    if not supported(block, proj, cache):
        raise ValueError("mamba2_block_step: a float32 state and contiguous caches only")
    if proj.stride(-1) != 1:
        proj = proj.contiguous()
    b = proj.shape[0]
    H, P, N, G, W = block.nheads, block.headdim, block.d_state, block.ngroups, block.d_conv
    Din, conv_dim = block.d_inner, block.conv_dim
    dev = proj.device
    act = torch.empty(b, conv_dim, device=dev, dtype=torch.float32)
    g = torch.empty(b, Din, device=dev, dtype=torch.float32)
    ss = torch.empty(b, H, device=dev, dtype=torch.float32)
    out = torch.empty(b, Din, device=dev, dtype=proj.dtype)
    interp = interpreting()
    warps = lambda k: {} if interp else dict(num_warps=k)  # noqa: E731
    _conv_step[(b, triton.cdiv(conv_dim, BLOCK_C))](
        proj, cache["conv"], block.conv1d.weight, block.conv1d.bias, act, proj.stride(0), Din, conv_dim,
        W=W, BLOCK_W=max(2, next_pow2(W)), BLOCK_C=BLOCK_C, **warps(4))
    _ssm_step[(b * H,)](
        proj, act, block.dt_bias, block.A_log, block.D, cache["ssm"], g, ss, proj.stride(0), H, H // G, G, P, N,
        Din, conv_dim, BLOCK_P=max(2, next_pow2(P)), BLOCK_N=max(2, next_pow2(N)),
        **warps(4 if P * N <= 64 * 128 else 8))
    size = Din // G
    _gated_norm[(b * G,)](g, ss, block.norm.weight, out, H, H // G, G, Din, block.norm.eps,
                          BLOCK_H=max(2, next_pow2(H // G)), BLOCK_S=min(2048, max(16, next_pow2(size))),
                          **warps(4))
    return out
