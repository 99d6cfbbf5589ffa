"""The first Triton selective scan, and the next rung of chapter 7's ladder.

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t,        y_t = <h_t, C_t>

``selective_scan_first_kernel`` is the smallest correct kernel: the recurrence
as it is written, one step per iteration of a loop over t. One program per
(batch element, group, block of BLOCK_D channels); the state h (BLOCK_D, N)
stays in registers for the whole sequence; each iteration loads x_t and Δ_t of
the block's channels and B_t, C_t of the group, and writes y_t.

``selective_scan_blocked_kernel`` is the next rung (chapter 7's exercise): the
loop takes BLOCK_L steps at a time, loads them as tiles, and scans them with
``tl.associative_scan``. Chapter 7 climbs from here to ``kernels/selective.py``.

Both compute what ``ssm_edu.selective_scan`` computes: the launchers apply
the options (Δ's bias and softplus, the skip D, the gate z) in PyTorch around
the kernel, which runs the scan only. Forward only; in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._launch import interpreting, next_pow2

__all__ = ["selective_scan_first", "selective_scan_blocked"]


@triton.jit
def selective_scan_first_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, y_ptr, h_ptr,
                                L, D, G, N,
                                BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    # x, Δ, y: (batch, D, L); A: (D, N); B, C: (batch, G, N, L); h: (batch, D, N)
    pid, g, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    dg = pid * BLOCK_D + tl.arange(0, BLOCK_D)  # channels within the group
    d_ok = dg < D // G
    d = g * (D // G) + dg                       # (BLOCK_D,) channels
    n = tl.arange(0, BLOCK_N)                   # (BLOCK_N,) state modes
    n_ok = n < N
    dn_ok = d_ok[:, None] & n_ok[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn_ok, other=0.0)
    row = (b * D + d) * L                       # where x, Δ, y of each channel start
    BCrow = ((b * G + g) * N + n) * L           # where B, C of each mode start
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for t in range(L):
        x = tl.load(x_ptr + row + t, mask=d_ok, other=0.0)    # (BLOCK_D,)
        dt = tl.load(dt_ptr + row + t, mask=d_ok, other=0.0)
        B = tl.load(B_ptr + BCrow + t, mask=n_ok, other=0.0)  # (BLOCK_N,)
        C = tl.load(C_ptr + BCrow + t, mask=n_ok, other=0.0)
        h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * B[None, :]
        y = tl.sum(h * C[None, :], axis=1)                    # <h_t, C_t>
        tl.store(y_ptr + row + t, y, mask=d_ok)
    tl.store(h_ptr + (b * D + d[:, None]) * N + n[None, :], h, mask=dn_ok)


@triton.jit
def _combine(a1, b1, a2, b2):
    # step (a1, b1), then step (a2, b2): h -> a2 (a1 h + b1) + b2
    return a2 * a1, a2 * b1 + b2


@triton.jit
def selective_scan_blocked_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, y_ptr, h_ptr,
                                  L, D, G, N,
                                  BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                                  BLOCK_L: tl.constexpr):
    # x, Δ, y: (batch, D, L); A: (D, N); B, C: (batch, G, N, L); h: (batch, D, N)
    pid, g, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    dg = pid * BLOCK_D + tl.arange(0, BLOCK_D)  # channels within the group
    d_ok = dg < D // G
    d = g * (D // G) + dg                       # (BLOCK_D,) channels
    n = tl.arange(0, BLOCK_N)                   # (BLOCK_N,) state modes
    n_ok = n < N
    dn_ok = d_ok[:, None] & n_ok[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=dn_ok, other=0.0)
    row = (b * D + d) * L                       # where x, Δ, y of each channel start
    BCrow = ((b * G + g) * N + n) * L           # where B, C of each mode start
    s = tl.arange(0, BLOCK_L)                   # (BLOCK_L,) steps within a block
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    for start in range(0, L, BLOCK_L):
        t = start + s
        m = d_ok[:, None] & (t < L)[None, :]                   # (BLOCK_D, BLOCK_L)
        mBC = n_ok[:, None] & (t < L)[None, :]                 # (BLOCK_N, BLOCK_L)
        x = tl.load(x_ptr + row[:, None] + t[None, :], mask=m, other=0.0)
        dt = tl.load(dt_ptr + row[:, None] + t[None, :], mask=m, other=0.0)
        B = tl.load(B_ptr + BCrow[:, None] + t[None, :], mask=mBC, other=0.0)
        C = tl.load(C_ptr + BCrow[:, None] + t[None, :], mask=mBC, other=0.0)
        a = tl.exp(dt[:, None, :] * A[:, :, None])         # (BLOCK_D, BLOCK_N,
        bx = (dt * x)[:, None, :] * B[None, :, :]          #  BLOCK_L) each
        first = s[None, None, :] == 0                      # the carried state enters
        bx = tl.where(first, a * h[:, :, None] + bx, bx)   # at the block's first step
        _, hs = tl.associative_scan((a, bx), 2, _combine)  # every h_t of the block
        y = tl.sum(hs * C[None, :, :], axis=1)             # (BLOCK_D, BLOCK_L)
        tl.store(y_ptr + row[:, None] + t[None, :], y, mask=m)
        last = s[None, None, :] == BLOCK_L - 1             # past L, Δ = 0: (1, 0)
        h = tl.sum(tl.where(last, hs, 0.0), axis=2)        # steps keep h
    tl.store(h_ptr + (b * D + d[:, None]) * N + n[None, :], h, mask=dn_ok)


def _scan(kernel, blocks, u, delta, A, B, C, D=None, z=None, delta_bias=None,
          delta_softplus=False, return_last_state=False):
    """The options in PyTorch around ``kernel``; arguments as ``selective_scan``."""
    batch, Dtot, L = u.shape
    N = A.shape[1]
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bg = B if B.dim() == 4 else B.unsqueeze(1)  # (batch, G, N, L)
    Cg = C if C.dim() == 4 else C.unsqueeze(1)
    G = max(Bg.shape[1], Cg.shape[1])
    Bg = Bg.float().expand(-1, G, -1, -1).contiguous()
    Cg = Cg.float().expand(-1, G, -1, -1).contiguous()
    x, dt = u.float().contiguous(), dt.contiguous()
    y = torch.empty_like(x)
    h = torch.empty(batch, Dtot, N, device=u.device, dtype=torch.float32)
    meta, warps = blocks(Dtot // G, N, L)
    grid = (triton.cdiv(Dtot // G, meta["BLOCK_D"]), G, batch)
    kernel[grid](x, dt, A.float().contiguous(), Bg, Cg, y, h, L, Dtot, G, N,
                 BLOCK_N=next_pow2(N), **meta, **warps)
    if D is not None:
        y = y + D.float()[:, None] * x
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(u.dtype)
    return (y, h.to(u.dtype)) if return_last_state else y


def _first_blocks(Dg, N, L):
    if interpreting():
        return dict(BLOCK_D=min(next_pow2(Dg), 4)), {}
    return dict(BLOCK_D=min(next_pow2(Dg), 32)), dict(num_warps=4)


def _blocked_blocks(Dg, N, L):
    if interpreting():
        return dict(BLOCK_D=min(next_pow2(Dg), 4), BLOCK_L=min(next_pow2(L), 8)), {}
    return dict(BLOCK_D=min(next_pow2(Dg), 32), BLOCK_L=4), dict(num_warps=4)


def selective_scan_first(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=False, return_last_state=False):
    """The selective scan by ``selective_scan_first_kernel`` (one step per iteration).

    Arguments and results as ``ssm_edu.selective_scan`` (forward only, no
    checks): u, delta, z (batch, D, L); A (D, N); B, C (batch, N, L) or
    (batch, G, N, L); D, delta_bias (D,). Computes in float32.
    """
    return _scan(selective_scan_first_kernel, _first_blocks, u, delta, A, B, C, D,
                 z, delta_bias, delta_softplus, return_last_state)


def selective_scan_blocked(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=False, return_last_state=False):
    """The same by ``selective_scan_blocked_kernel`` (BLOCK_L steps per iteration)."""
    return _scan(selective_scan_blocked_kernel, _blocked_blocks, u, delta, A, B, C, D,
                 z, delta_bias, delta_softplus, return_last_state)
