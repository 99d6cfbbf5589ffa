"""Triton Cauchy product, the one heavy operation of the S4 kernel (chapter 5).

The operation: out[r, l] = Σ_n v[r, n] / (z[l] - w[r, n]) for every row r of the
flattened batch (r runs over the (4, H) Cauchy products of S4), every point l
of L and every mode n of N. The vectorized version builds the (rows, L, N)
matrix of 1/(z_l - w_n) in memory; this kernel never does.

Work split. One program per (block of BLOCK_L points, row r). It loads its
BLOCK_L values of z once, then walks N in blocks of BLOCK_N: it loads BLOCK_N
values of v and w, forms the (BLOCK_L, BLOCK_N) tile of quotients in
registers, and reduces it over n into two accumulators (real and imaginary
parts, BLOCK_L float32 each). Only the reduced (BLOCK_L,) result is stored.

Where data lives. z (BLOCK_L) and the accumulators stay in registers for the
whole loop; v[r] and w[r] are re-read from L2 by the L / BLOCK_L programs of
row r. Traffic: about rows * (L + 2 N * L / BLOCK_L) complex numbers, against
rows * L * N for the vectorized version's intermediate.

Complex numbers. Triton has no complex type: the launcher passes every
complex64 tensor as its float32 view (torch.view_as_real, real and imaginary
parts interleaved, so element k sits at 2k and 2k + 1). The division is
written out: v / d = v * conj(d) / |d|^2. S4 evaluates at points z that can
be as large as 1e16 / Δ (at ω = -1), where |d|^2 overflows float32, so d is
first scaled by s = max(|Re d|, |Im d|) (Smith's idea):
v / d = v * conj(d/s) / (s |d/s|^2). Accumulation in float32. Padded modes
(n >= N) are masked to contribute 0.

Any L and N: both loops are masked, so neither needs to be a multiple of its
block. complex128 is not supported (use impl="vectorized"). Gradients: the
backward pass uses the closed-form derivatives with PyTorch operations (it
materialises (rows, L, N), as the vectorized version does):
dout/dv = 1/(z - w), dout/dw = v/(z - w)^2, dout/dz = -Σ_n v/(z - w)^2.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

__all__ = ["cauchy_triton", "cauchy_fwd"]


@triton.jit
def _cauchy_fwd(
    v_ptr, z_ptr, w_ptr, out_ptr,
    N, L,
    BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_l = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # (BLOCK_L,)
    l_ok = l < L
    zr = tl.load(z_ptr + 2 * l, mask=l_ok, other=0.0)
    zi = tl.load(z_ptr + 2 * l + 1, mask=l_ok, other=0.0)
    v_row = v_ptr + row * 2 * N
    w_row = w_ptr + row * 2 * N
    acc_r = tl.zeros((BLOCK_L,), dtype=tl.float32)
    acc_i = tl.zeros((BLOCK_L,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        n_ok = n < N
        vr = tl.load(v_row + 2 * n, mask=n_ok, other=0.0)
        vi = tl.load(v_row + 2 * n + 1, mask=n_ok, other=0.0)
        wr = tl.load(w_row + 2 * n, mask=n_ok, other=0.0)
        wi = tl.load(w_row + 2 * n + 1, mask=n_ok, other=0.0)
        dr = zr[:, None] - wr[None, :]  # (BLOCK_L, BLOCK_N) d = z - w
        di = zi[:, None] - wi[None, :]
        s = tl.maximum(tl.abs(dr), tl.abs(di))  # scale: |d/s|^2 lies in [1, 2]
        s = tl.where(n_ok[None, :], s, 1.0)  # padded modes: no 0/0
        dr = dr / s
        di = di / s
        den = tl.where(n_ok[None, :], s * (dr * dr + di * di), 1.0)
        inv = tl.where(n_ok[None, :], 1.0 / den, 0.0)  # padded modes add 0
        # v / d = v conj(d) / |d|^2, real and imaginary parts
        acc_r += tl.sum((vr[None, :] * dr + vi[None, :] * di) * inv, axis=1)
        acc_i += tl.sum((vi[None, :] * dr - vr[None, :] * di) * inv, axis=1)
    out_row = out_ptr + row * 2 * L
    tl.store(out_row + 2 * l, acc_r, mask=l_ok)
    tl.store(out_row + 2 * l + 1, acc_i, mask=l_ok)


def cauchy_fwd(v, z, w, block_l=None, block_n=None):
    """Launch the kernel. v, w (..., N), z (L,) complex64 -> out (..., L) complex64.

    The keyword arguments override the block sizes (benchmarks only).
    """
    for name, x in (("v", v), ("z", z), ("w", w)):
        if x.dtype != torch.complex64:
            raise ValueError(f"cauchy(impl='triton') supports complex64 only; got "
                             f"{name} {x.dtype} (use impl='vectorized' for complex128)")
    batch, N, L = v.shape[:-1], v.shape[-1], z.shape[0]
    # float32 views (rows, N, 2) and (L, 2); a lazy x.conj() view must be resolved first
    v2 = torch.view_as_real(v.reshape(-1, N).resolve_conj().contiguous())
    w2 = torch.view_as_real(w.reshape(-1, N).resolve_conj().contiguous())
    z2 = torch.view_as_real(z.resolve_conj().contiguous())
    rows = v2.shape[0]
    out = torch.empty(rows, L, dtype=torch.complex64, device=v.device)
    if rows == 0 or L == 0:
        return out.reshape(*batch, L)
    if N == 0:
        return out.zero_().reshape(*batch, L)
    # a (64, 32) float32 tile: 16 registers per thread at 4 warps
    block_l = min(block_l or 64, triton.next_power_of_2(L))
    block_n = min(block_n or 32, triton.next_power_of_2(N))
    grid = (triton.cdiv(L, block_l), rows)
    _cauchy_fwd[grid](v2, z2, w2, torch.view_as_real(out), N, L,
                      BLOCK_L=block_l, BLOCK_N=block_n)
    return out.reshape(*batch, L)


class _Cauchy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, z, w):
        ctx.save_for_backward(v, z, w)
        return cauchy_fwd(v, z, w)

    @staticmethod
    def backward(ctx, g):
        # PyTorch's complex convention: for a holomorphic f, grad_x = g * conj(df/dx).
        v, z, w = ctx.saved_tensors
        r = 1 / (z.unsqueeze(-1) - w.unsqueeze(-2))  # (..., L, N)
        gv = gz = gw = None
        if ctx.needs_input_grad[0]:
            gv = (g.unsqueeze(-1) * r.conj()).sum(-2)  # (..., N)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            q = g.unsqueeze(-1) * (v.unsqueeze(-2) * r * r).conj()  # (..., L, N)
            if ctx.needs_input_grad[1]:
                gz = -q.sum(-1).reshape(-1, z.shape[0]).sum(0)  # (L,)
            if ctx.needs_input_grad[2]:
                gw = q.sum(-2)  # (..., N)
        return gv, gz, gw


def cauchy_triton(v, z, w):
    """Cauchy product with the Triton kernel (see the module docstring).

    v, w (..., N), z (L,), complex64 -> out (..., L) complex64. Differentiable
    in v, z and w.
    """
    if torch.is_grad_enabled() and any(x.requires_grad for x in (v, z, w)):
        return _Cauchy.apply(v, z, w)
    return cauchy_fwd(v, z, w)
