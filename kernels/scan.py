"""Triton linear scan h_t = a_t h_{t-1} + b_t (chapter 6).

The operation runs along the last axis of a, b (..., L); the launcher views
them as R = prod(...) independent rows of length L.

Work split. One program per block of BLOCK_R rows. The program walks its
rows' time axis in blocks of BLOCK_L steps: it loads a and b
(BLOCK_R, BLOCK_L), scans the block with ``tl.associative_scan`` and the
combine (a, b) ∘ (a', b') = (a' a, a' b + b'), which gives, for every t of
the block, the composed step (A_t, H_t) from the block's start to t. With the
carry c (h at the end of the previous block), h_t = A_t c + H_t; the new carry
is h at the block's last column. Positions past L are loaded as the identity
step (a = 1, b = 0), so the last column is h at the last real step and L
need not be a multiple of BLOCK_L.

Where the state lives. The carry (BLOCK_R float32 values) stays in registers
for the whole sequence; the block's pairs (A_t, H_t) live in registers while
the scan runs (Triton's scan is a tree across the threads of the program).
Nothing but a, b (read once) and h (written once) touches global memory: 3
elements of traffic per step and 3 multiply-adds of work per combine level, so
the kernel is bound by memory bandwidth, like an elementwise operation.

Depth. Within a block the scan takes log2 BLOCK_L combine levels; blocks
follow each other in one program, so the depth is (L / BLOCK_L) log2 BLOCK_L.
Parallelism comes from the rows (batch x channels x state modes of an SSM is
usually many thousands), not from splitting one row across programs.

Precision. Inputs float32, bfloat16 or float16; every combine is computed in
float32 (values are cast after loading) and h is stored in the input dtype.
In Triton's CPU interpreter, half-precision arithmetic is not supported: the
launcher casts to float32 before the launch and the result back after it.
Complex a, b are not supported (Triton has no complex type); the dispatcher
raises before reaching this module.

Block sizes (GPU, not tuned yet): BLOCK_R = 4 rows, BLOCK_L = 256 steps, 4
warps. In the interpreter: small blocks, because its ``associative_scan``
with a custom combine runs a Python loop per element.

Gradients: with g = dLoss/dh, the adjoint recurrence is the same scan run
backwards, gb_t = g_t + a_{t+1} gb_{t+1}; then db = gb, da_t = gb_t h_{t-1}
and dh0 = a_0 gb_0. The backward pass reuses the forward kernel on
time-reversed inputs.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from ._launch import interpreting, next_pow2

__all__ = ["linear_scan_triton", "linear_scan_fwd"]

_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) first, then (a2, b2): x -> a2 (a1 x + b1) + b2
    return a2 * a1, a2 * b1 + b2


@triton.jit
def _linear_scan_fwd(
    a_ptr, b_ptr, h0_ptr, h_ptr,
    R, L,
    HAS_H0: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # (BLOCK_R,)
    row_ok = rows < R
    row_off = rows.to(tl.int64) * L  # (BLOCK_R,) rows are contiguous, length L
    cols = tl.arange(0, BLOCK_L)  # (BLOCK_L,)
    if HAS_H0:
        carry = tl.load(h0_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)  # (BLOCK_R,)
    else:
        carry = tl.zeros([BLOCK_R], dtype=tl.float32)
    for start in range(0, L, BLOCK_L):
        t = start + cols  # (BLOCK_L,)
        mask = row_ok[:, None] & (t < L)[None, :]  # (BLOCK_R, BLOCK_L)
        offs = row_off[:, None] + t[None, :]
        a = tl.load(a_ptr + offs, mask=mask, other=1.0).to(tl.float32)  # identity step past L
        b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        A, H = tl.associative_scan((a, b), 1, _combine)  # composed steps from the block start
        h = A * carry[:, None] + H  # (BLOCK_R, BLOCK_L)
        tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
        carry = tl.sum(tl.where(cols[None, :] == BLOCK_L - 1, h, 0.0), axis=1)  # h at the block's last column


def linear_scan_fwd(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None,
                    block_r=None, block_l=None, num_warps=None) -> torch.Tensor:
    """Launch the forward kernel. a, b (..., L) and h0 (...) of one dtype -> h (..., L).

    The keyword arguments override the block sizes (benchmarks only).
    """
    if a.dtype not in _SUPPORTED or b.dtype != a.dtype or (h0 is not None and h0.dtype != a.dtype):
        raise ValueError("linear_scan(impl='triton') supports real float32, bfloat16 and float16 inputs of one dtype; "
                         f"got a {a.dtype}, b {b.dtype}" + ("" if h0 is None else f", h0 {h0.dtype}"))
    in_interpreter = interpreting()
    if in_interpreter and a.dtype != torch.float32:  # the interpreter computes in float32 only
        return linear_scan_fwd(a.float(), b.float(), None if h0 is None else h0.float()).to(a.dtype)
    shape = b.shape
    L = shape[-1]
    a2 = a.reshape(-1, L).contiguous()  # (R, L)
    b2 = b.reshape(-1, L).contiguous()
    R = b2.shape[0]
    h = torch.empty_like(b2)
    if R == 0:
        return h.reshape(shape)
    h0_2 = h0.reshape(-1).contiguous() if h0 is not None else b2  # dummy pointer when HAS_H0 is False
    if in_interpreter:
        block_r = block_r or min(next_pow2(R), 4)
        block_l = block_l or min(next_pow2(L), 32)
        extra = {}
    else:
        block_r = block_r or 4
        block_l = block_l or min(next_pow2(L), 256)
        extra = dict(num_warps=num_warps or 4)
    grid = (triton.cdiv(R, block_r),)
    _linear_scan_fwd[grid](a2, b2, h0_2, h, R, L, HAS_H0=h0 is not None, BLOCK_R=block_r, BLOCK_L=block_l, **extra)
    return h.reshape(shape)


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, h0):
        h = linear_scan_fwd(a, b, h0)
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    def backward(ctx, g):
        a, h, h0 = ctx.saved_tensors
        # adjoint: gb_t = g_t + a_{t+1} gb_{t+1}, a forward scan on reversed time
        a_next = torch.cat([a[..., 1:], torch.zeros_like(a[..., :1])], dim=-1)  # a_{t+1}, 0 past the end
        gb = linear_scan_fwd(a_next.flip(-1).contiguous(), g.to(a.dtype).flip(-1).contiguous()).flip(-1)
        h_prev = torch.cat([(torch.zeros_like(h[..., :1]) if h0 is None else h0.unsqueeze(-1)), h[..., :-1]], dim=-1)
        ga = gb * h_prev if ctx.needs_input_grad[0] else None
        gb_out = gb if ctx.needs_input_grad[1] else None
        gh0 = (a[..., 0] * gb[..., 0]) if (h0 is not None and ctx.needs_input_grad[2]) else None
        return ga, gb_out, gh0


def linear_scan_triton(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """The scan in Triton (see the module docstring).

    a, b (..., L), h0 (...) or None, all float32, bfloat16 or float16 (one
    dtype) -> h (..., L) in that dtype. Differentiable in a, b and h0.
    """
    needs_grad = any(x is not None and x.requires_grad for x in (a, b, h0))
    if torch.is_grad_enabled() and needs_grad:
        return _LinearScan.apply(a, b, h0)
    return linear_scan_fwd(a, b, h0)
