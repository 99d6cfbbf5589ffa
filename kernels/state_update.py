"""Triton decoding step of a selective SSM (chapter 7; Mamba-2 uses it too).

    state <- exp(dt A) ⊙ state + dt x B^T,    out = state C + D x,  then out · silu(z)

One token: no time axis, so no scan. The launcher views both layouts as
headed, state (batch, H, P, N): a Mamba-1 state (batch, D, N) with G groups
is H = G heads of P = D / G channels (a view, no copy).

Work split. One program per (batch element, head, block of BLOCK_P channels).
It loads the state tile (BLOCK_P, N), x and dt (BLOCK_P,), the head's group
row of B and C (N,), updates the tile, stores it back in place and reduces it
against C for the output.

What moves through memory. The state is read once and written once; all
other inputs are N or P times smaller. So the kernel is bound by memory
bandwidth: its floor is 2 · batch · H · P · N · sizeof(state) bytes at the
HBM rate. When dt, dt_bias and A are broadcast over P and N (stride 0; the
Mamba-2 case, one scalar per head), the program loads one scalar of each and
computes one exponential instead of BLOCK_P · N.

In place. Each state element is read and written by the same program, once:
no other program touches it, so the in-place update needs no
synchronisation (and no autotuning, which would apply the update several
times).

Precision. The state may be float32, bfloat16 or float16; the arithmetic is
float32; the state is stored back in its own dtype and out in x's dtype. In
Triton's CPU interpreter the launcher works on float32 copies.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import interpreting, next_pow2
from .selective import _softplus

__all__ = ["selective_state_update_triton"]

_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _state_update(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    P, N, heads_per_group,
    s_sb, s_sh, s_sp, s_sn, s_xb, s_xh, s_xp, s_tb, s_th, s_tp, s_Ah, s_Ap, s_An,
    s_Bb, s_Bg, s_Bn, s_Cb, s_Cg, s_Cn, s_Dh, s_Dp, s_zb, s_zh, s_zp, s_bh, s_bp,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HEAD_SCALAR: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_p, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    g = h // heads_per_group
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # (BLOCK_P,)
    n = tl.arange(0, BLOCK_N)
    p_ok, n_ok = p < P, n < N
    pn_ok = p_ok[:, None] & n_ok[None, :]
    s_ptrs = state_ptr + b * s_sb + h * s_sh + p[:, None] * s_sp + n[None, :] * s_sn
    state = tl.load(s_ptrs, mask=pn_ok, other=0.0).to(tl.float32)  # (BLOCK_P, BLOCK_N)
    x = tl.load(x_ptr + b * s_xb + h * s_xh + p * s_xp, mask=p_ok, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * s_Bb + g * s_Bg + n * s_Bn, mask=n_ok, other=0.0).to(tl.float32)  # (BLOCK_N,)
    Cv = tl.load(C_ptr + b * s_Cb + g * s_Cg + n * s_Cn, mask=n_ok, other=0.0).to(tl.float32)
    if HEAD_SCALAR:  # one dt and one A per head
        dt = tl.load(dt_ptr + b * s_tb + h * s_th).to(tl.float32)
        if HAS_BIAS:
            dt += tl.load(bias_ptr + h * s_bh).to(tl.float32)
        if SOFTPLUS:
            dt = _softplus(dt)
        decay = tl.exp(dt * tl.load(A_ptr + h * s_Ah).to(tl.float32))  # a scalar
        state = decay * state + (dt * x)[:, None] * Bv[None, :]
    else:
        dt = tl.load(dt_ptr + b * s_tb + h * s_th + p * s_tp, mask=p_ok, other=0.0).to(tl.float32)  # (BLOCK_P,)
        if HAS_BIAS:
            dt += tl.load(bias_ptr + h * s_bh + p * s_bp, mask=p_ok, other=0.0).to(tl.float32)
        if SOFTPLUS:
            dt = _softplus(dt)
        A = tl.load(A_ptr + h * s_Ah + p[:, None] * s_Ap + n[None, :] * s_An, mask=pn_ok, other=0.0).to(tl.float32)
        state = tl.exp(dt[:, None] * A) * state + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, state.to(state_ptr.dtype.element_ty), mask=pn_ok)
    out = tl.sum(state * Cv[None, :], axis=1)  # (BLOCK_P,)
    if HAS_D:
        out += x * tl.load(D_ptr + h * s_Dh + p * s_Dp, mask=p_ok, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + b * s_zb + h * s_zh + p * s_zp, mask=p_ok, other=0.0).to(tl.float32)
        out *= z * tl.sigmoid(z)
    tl.store(out_ptr + (b * tl.num_programs(1) + h) * P + p, out.to(out_ptr.dtype.element_ty), mask=p_ok)


def _headed(state, x, dt, A, B, C, D, z, dt_bias):
    """Both layouts as headed views: (b, D, N) with G groups -> (b, G, D/G, N). B, C -> (b, G, N)."""
    G = max(X.shape[1] if X.dim() == 3 else 1 for X in (B, C))
    B, C = (X if X.dim() == 3 else X.unsqueeze(1).expand(-1, G, -1) for X in (B, C))
    if state.dim() == 4:
        return state, x, dt, A, B, C, D, z, dt_bias

    def split(t, dim):
        return None if t is None else t.unflatten(dim, (G, -1))

    return (split(state, 1), split(x, 1), split(dt, 1), split(A, 0), B, C, split(D, 0), split(z, 1),
            split(dt_bias, 0))


def _strides(t, n):
    return t.stride() if t is not None else (0,) * n


def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                                  block_p=None, num_warps=None):
    """One decoding step in Triton; arguments as ``ssm_edu.selective_state_update``.

    Updates ``state`` in place and returns out (x's shape and dtype). Any
    strides (stride 0 for the broadcast dt and A of Mamba-2). ``block_p`` and
    ``num_warps`` override the launch configuration (benchmarks).
    """
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("dt_bias", dt_bias)):
        if t is not None and t.dtype not in _SUPPORTED:
            raise ValueError(f"selective_state_update(impl='triton') supports float32, bfloat16 and float16; "
                             f"got {name} {str(t.dtype).replace('torch.', '')}")
    if interpreting() and any(t is not None and t.dtype != torch.float32
                              for t in (state, x, dt, A, B, C, D, z, dt_bias)):
        # the interpreter computes in float32 only: update a float32 copy and write it back
        work = state.float()
        f32 = [None if t is None else t.float() for t in (x, dt, A, B, C, D, z, dt_bias)]
        out = selective_state_update_triton(work, *f32[:5], D=f32[5], z=f32[6], dt_bias=f32[7], dt_softplus=dt_softplus)
        state.copy_(work)
        return out.to(x.dtype)
    shape = x.shape
    st, x, dt, A, B, C, D, z, dt_bias = _headed(state, x, dt, A, B, C, D, z, dt_bias)
    batch, H, P, N = st.shape
    out = torch.empty(batch, H, P, device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out.reshape(shape)
    BN = next_pow2(N)
    # Mamba-2: dt, dt_bias and A broadcast over P and N
    head_scalar = (dt.stride(2) == 0 and A.stride(1) == 0 and A.stride(2) == 0
                   and (dt_bias is None or dt_bias.stride(1) == 0))
    if interpreting():
        bp, extra = block_p or min(next_pow2(P), 4), {}
    else:
        # ~1024 state elements per program (8 channels of N = 128): 87% of HBM bandwidth on an H100
        bp = block_p or max(1, min(next_pow2(P), 1024 // BN))
        extra = dict(num_warps=num_warps or (2 if bp * BN <= 1024 else 4))
    grid = (triton.cdiv(P, bp), H, batch)
    dummy = out
    _state_update[grid](
        st, x, dt, A, B, C, dummy if D is None else D, dummy if z is None else z,
        dummy if dt_bias is None else dt_bias, out,
        P, N, H // B.shape[1],
        *st.stride(), *x.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(), *_strides(D, 2),
        *_strides(z, 3), *_strides(dt_bias, 2),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        HEAD_SCALAR=head_scalar, BLOCK_P=bp, BLOCK_N=BN, **extra)
    return out.reshape(shape)
