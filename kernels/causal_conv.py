"""Triton causal convolution as a block-Toeplitz matrix product (chapter 3).

The operation: y[b, h, t] = sum_{s <= t} K[h, t - s] u[b, h, s]. For one channel
h it is a matrix product Y = U Tᵀ with U (batch, L) and T (L, L) the
lower-triangular Toeplitz matrix T[t, s] = K[t - s]. FFT convolution does
O(L log L) work in float32 on the CUDA cores; this kernel does the O(L²) direct
sum, but on the tensor cores, which run bf16 products about 15 times faster,
and it never leaves the input precision except in the accumulator.

Tiles. Cut the time axis into blocks of BLOCK_T. The (t-block, s-block) tile of T
depends only on the block lag d = t-block - s-block:

    W_d[s, t] = K[d * BLOCK_T + t - s]      (s, t < BLOCK_T; zero where the index is < 0)

W_0 is the lower-triangular diagonal tile, and tiles with d < 0 (above the
diagonal) are zero and never visited. So every output block is

    Y[:, tb] = sum_{d=0}^{tb} U[:, tb - d] @ W_d.

Work split. One program per (channel h, group of R consecutive t-blocks,
block of BLOCK_B sequences). Its M = R * BLOCK_B rows are the pairs (r, b):
sequence b of t-block tb0 + r. The program walks the lags d = 0, 1, ...: it
builds W_d once, on the fly, by a gather from K[h] (K[h] is read by every
program of channel h, so it sits in L1/L2, not HBM), loads the R * BLOCK_B
input tiles U[b, tb0 + r - d] (rows with tb0 + r - d < 0 are masked to zero),
and accumulates one tl.dot of (M x BLOCK_T) @ (BLOCK_T x BLOCK_T). Stacking R
t-blocks into M is what makes this fast at small batch: one gathered tile
W_d feeds M rows of the product, so the gather (scalar loads) is amortised
over M multiply-adds per element; with batch 1, M = R rows of one sequence.

Where data lives. The accumulator (M x BLOCK_T, float32) stays in registers
for the whole loop; W_d and the U tiles pass through registers and shared
memory into the tensor cores. Traffic: K[h] once from HBM per channel; each
u[b, h] is re-read from L2 by every later t-block group of its channel
(programs of one channel run close together: the grid's fastest axis is the
t-block group, heaviest first); y is written once. Work: about
batch * H * L² multiply-adds (the triangle), plus the diagonal tiles' zeros.

Any L: the last t-block is masked (loads beyond L read zeros, stores beyond L
are dropped), so L need not be a multiple of BLOCK_T; batch need not be a
multiple of BLOCK_B.

Precision: bf16/fp16 operands on the tensor cores with float32 accumulation;
float32 inputs use ``input_precision="ieee"`` (full float32 products, no TF32:
the API's 1e-5 tolerance). Output in the input dtype. float64 is not supported
here (impl="vectorized" is). In Triton's CPU interpreter (no GPU) the kernel
runs in float32: half-precision inputs are cast to float32 before the launch
and the result cast back.

Block sizes (GPU): BLOCK_T = 64 and M = 256 rows (4 t-blocks x 64 sequences
at batch 64), 8 warps, 3 pipeline stages; the accumulator is 64 float32
registers per thread. Measured on an H100 (torch 2.11, Triton 3.6) at batch 64,
H = 768, L = 4096, bf16: 2.6 ms against 8.2 ms for torch.fft (3.2x), 40% of the
tensor-core floor of B*H*L² FLOPs / 790 TFLOP/s = 1.04 ms. M = 128 took 3.0 ms
and M = 64 4.7 ms: the gather of W_d, not the products, sets the pace, so every
row added to M makes it cheaper per multiply-add. Being O(L²), the kernel loses
to FFT at long enough L: at batch 16, H = 256, bf16 the two met near L = 16384.
For float32 inputs the full-precision products run on the CUDA cores, several
times slower than FFT: the kernel pays off in bf16/fp16.

Gradients: the backward pass reuses the kernel for du (an anti-causal
convolution is a causal one on time-reversed signals) and computes dK, a
correlation summed over the batch, by FFT in float32.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from ._launch import interpreting, next_pow2

__all__ = ["causal_conv_triton", "causal_conv_fwd"]

_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _causal_conv_fwd(
    u_ptr, k_ptr, y_ptr,
    B, L, N_TB,
    stride_ub, stride_uh, stride_kh, stride_yb, stride_yh,
    BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr, R: tl.constexpr,
    IEEE: tl.constexpr,
):
    M: tl.constexpr = R * BLOCK_B
    n_groups = tl.cdiv(N_TB, R)
    group = n_groups - 1 - tl.program_id(0)  # heaviest (latest) t-blocks first
    h = tl.program_id(1)
    b0 = tl.program_id(2) * BLOCK_B
    tb0 = group * R

    m = tl.arange(0, M)
    r = m // BLOCK_B  # (M,) which t-block of the group
    b = b0 + m % BLOCK_B  # (M,) which sequence
    b_ok = b < B
    i = tl.arange(0, BLOCK_T)  # position inside a block: s on rows of W, t on columns

    u_row = u_ptr + b.to(tl.int64) * stride_ub + h.to(tl.int64) * stride_uh  # (M,) pointers
    k_row = k_ptr + h.to(tl.int64) * stride_kh
    lag_in_tile = i[None, :] - i[:, None]  # (BLOCK_T, BLOCK_T): t - s

    acc = tl.zeros((M, BLOCK_T), dtype=tl.float32)
    d_end = tl.minimum(tb0 + R, N_TB)  # lags beyond the last t-block of the group are empty
    for d in range(0, d_end):
        # W_d[s, t] = K[d * BLOCK_T + t - s]: a gather from K[h] (L1/L2 resident)
        k_idx = d * BLOCK_T + lag_in_tile
        W = tl.load(k_row + k_idx, mask=(k_idx >= 0) & (k_idx < L), other=0.0)  # (BLOCK_T, BLOCK_T)
        # U rows: sequence b, s-block tb0 + r - d
        sb = tb0 + r - d  # (M,)
        s = sb[:, None] * BLOCK_T + i[None, :]  # (M, BLOCK_T)
        U = tl.load(u_row[:, None] + s, mask=(b_ok & (sb >= 0))[:, None] & (s < L) & (s >= 0), other=0.0)
        if IEEE:
            acc = tl.dot(U, W, acc, input_precision="ieee")
        else:
            acc = tl.dot(U, W, acc)

    t = (tb0 + r)[:, None] * BLOCK_T + i[None, :]  # (M, BLOCK_T)
    y_ptrs = y_ptr + b.to(tl.int64)[:, None] * stride_yb + h.to(tl.int64) * stride_yh + t
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=b_ok[:, None] & (t < L))


def _config(batch: int, L: int, in_interpreter: bool, block_t=None, target_m=None):
    """Block sizes: BLOCK_B sequences x R t-blocks make M = R * BLOCK_B >= 16 rows."""
    if in_interpreter:  # small tiles: the interpreter is slow, and tl.dot needs dims >= 16
        block_t, target_m = block_t or 16, target_m or 16
    else:
        block_t, target_m = block_t or 64, target_m or 256
    block_b = min(next_pow2(batch), target_m)
    n_tb = triton.cdiv(L, block_t)
    r = max(16 // block_b, min(target_m // block_b, next_pow2(n_tb)), 1)
    return block_b, block_t, r


def causal_conv_fwd(u: torch.Tensor, K: torch.Tensor, block_t=None, target_m=None, num_warps=None, num_stages=None) -> torch.Tensor:
    """Launch the forward kernel. u (batch, H, L), K (H, L) or (L,) of one dtype -> y (batch, H, L).

    The keyword arguments override the block sizes (benchmarks only).
    """
    if u.dtype not in _SUPPORTED or K.dtype != u.dtype:
        raise ValueError(f"causal_conv(impl='triton') supports float32, bfloat16 and float16 inputs of one dtype; "
                         f"got u {u.dtype}, K {K.dtype} (use impl='vectorized' for float64)")
    in_interpreter = interpreting()
    if in_interpreter and u.dtype != torch.float32:  # the interpreter computes in float32 only
        return causal_conv_fwd(u.float(), K.float()).to(u.dtype)
    batch, H, L = u.shape
    u = u.contiguous()
    K = K.contiguous()
    y = torch.empty_like(u)
    if batch == 0 or H == 0:
        return y
    block_b, block_t, r = _config(batch, L, in_interpreter, block_t, target_m)
    n_tb = triton.cdiv(L, block_t)
    grid = (triton.cdiv(n_tb, r), H, triton.cdiv(batch, block_b))
    extra = {}
    if not in_interpreter:
        extra = dict(num_warps=num_warps or (8 if r * block_b >= 128 else 4), num_stages=num_stages or 3)
    _causal_conv_fwd[grid](
        u, K, y, batch, L, n_tb,
        u.stride(0), u.stride(1), K.stride(0) if K.dim() == 2 else 0, y.stride(0), y.stride(1),
        BLOCK_B=block_b, BLOCK_T=block_t, R=r, IEEE=(u.dtype == torch.float32), **extra,
    )
    return y


class _CausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, K):
        ctx.save_for_backward(u, K)
        return causal_conv_fwd(u, K)

    @staticmethod
    def backward(ctx, gy):
        u, K = ctx.saved_tensors
        gu = gK = None
        if ctx.needs_input_grad[0]:
            # du[s] = sum_{t >= s} K[t - s] gy[t]: causal on the reversed time axis
            gu = causal_conv_fwd(gy.flip(-1).contiguous(), K).flip(-1)
        if ctx.needs_input_grad[1]:
            # dK[j] = sum_b sum_t gy[b, t] u[b, t - j]: a correlation, by FFT padded to 2L
            L = u.shape[-1]
            n = 2 * L
            corr = torch.fft.irfft(torch.fft.rfft(gy.float(), n=n) * torch.fft.rfft(u.float(), n=n).conj(), n=n)[..., :L]
            gK = corr.sum(0) if K.dim() == 2 else corr.sum((0, 1))
            gK = gK.to(K.dtype)
        return gu, gK


def causal_conv_triton(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Causal convolution on the tensor cores (see the module docstring).

    u (batch, H, L), K (H, L) or (L,), both float32, bfloat16 or float16 (one
    dtype) -> y (batch, H, L) in that dtype. Differentiable in u and K.
    """
    if torch.is_grad_enabled() and (u.requires_grad or K.requires_grad):
        return _CausalConv.apply(u, K)
    return causal_conv_fwd(u, K)
