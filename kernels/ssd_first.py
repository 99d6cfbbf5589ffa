"""The first Triton kernel for SSD (chapter 8): the smallest correct forward pass.

This is the chunked algorithm of ``ssm_edu.ssd`` in one loop, written to be read,
not tuned; ``kernels/ssd.py`` is the fast version, and chapter 8 climbs from this
kernel to it one change at a time (``kernels/ssd_ladder.py``).

Work split: one program per (batch b, head h). It walks the chunks of Q = 64 steps
in order and keeps the head's state, transposed (N, P), in registers. For chunk k,
with a_t = Δ_t A and a⁺_t its running sum from the chunk's start:

    Y = (C Bᵀ ∘ M ∘ Δ_s) X + exp(a⁺_t) C S      the diagonal block + the state S
    S ← exp(a⁺_end) S + (exp(a⁺_end - a⁺_s) Δ_s B_s)ᵀ X        entering the chunk

with M[t, s] = exp(a⁺_t - a⁺_s) for s <= t and 0 above the diagonal. Steps past L
load Δ = 0 (no decay, no input) and are not stored, so L need not be a multiple of
Q. The three matrix products take the inputs' own type and accumulate in float32:
bfloat16 operands run on the tensor cores, float32 ones as exact float32 products
(``input_precision="ieee"``; Triton's default for float32 is TF32, 10-bit
mantissas). The state, the decays and Δ are float32.

Only the recurrence itself: Δ = dt is used as given (no dt_bias or softplus), with
no D, gate or initial state; those are elementwise and live in ``ssd_fwd``.
Offsets are 32-bit: inputs up to 2³¹ elements.
"""

import torch
import triton
import triton.language as tl

from ._launch import interpreting

__all__ = ["ssd_first", "ssd_first_kernel"]


@triton.jit
def ssd_first_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, y_ptr, L, H, G, P, N,
                     Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                     PREC: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    g = h // (H // G)  # the group of B and C that head h reads
    s = tl.arange(0, Q)  # a step within the chunk
    p = tl.arange(0, BP)
    n = tl.arange(0, BN)
    A = tl.load(A_ptr + h)
    S = tl.zeros([BN, BP], dtype=tl.float32)  # the state, transposed: (N, P)
    for k in range(0, tl.cdiv(L, Q)):
        t = k * Q + s  # the chunk's time steps
        ok = t < L
        xy = ((b * L + t[:, None]) * H + h) * P + p[None, :]  # offsets in (b, L, H, P)
        x_ok = ok[:, None] & (p < P)[None, :]
        bc = ((b * L + t[:, None]) * G + g) * N + n[None, :]  # offsets in (b, L, G, N)
        bc_ok = ok[:, None] & (n < N)[None, :]
        X = tl.load(x_ptr + xy, mask=x_ok, other=0.0)  # (Q, P), the input dtype
        Bk = tl.load(B_ptr + bc, mask=bc_ok, other=0.0)  # (Q, N)
        Ck = tl.load(C_ptr + bc, mask=bc_ok, other=0.0)  # (Q, N)
        dt = tl.load(dt_ptr + (b * L + t) * H + h, mask=ok, other=0.0)  # (Q,) Δ

        a = tl.cumsum(dt * A, axis=0)  # (Q,) a⁺_t
        a_end = tl.sum(dt * A, axis=0)  # the chunk's total log-decay
        causal = s[:, None] >= s[None, :]  # (Q, Q): t >= s
        M = tl.where(causal, tl.exp(a[:, None] - a[None, :]), 0.0)
        CB = tl.dot(Ck, tl.trans(Bk), input_precision=PREC)  # (Q, Q)
        W = (CB * M * dt[None, :]).to(X.dtype)
        Y = tl.dot(W, X, input_precision=PREC)
        Y += tl.dot(Ck, S.to(X.dtype), input_precision=PREC) * tl.exp(a)[:, None]
        wB = Bk.to(tl.float32) * (tl.exp(a_end - a) * dt)[:, None]  # (Q, N)
        wB = tl.trans(wB.to(X.dtype))
        S = S * tl.exp(a_end) + tl.dot(wB, X, input_precision=PREC)
        tl.store(y_ptr + xy, Y.to(y_ptr.dtype.element_ty), mask=x_ok)


def ssd_first(x, dt, A, B, C):
    """SSD, Δ = dt as given: x (b, L, H, P), dt (b, L, H), A (H,), B, C (b, L, G, N).

    Returns y (b, L, H, P) in x's dtype; dt and A are used in float32.
    """
    if interpreting() and x.dtype != torch.float32:  # no bfloat16 in the interpreter
        return ssd_first(x.float(), dt, A, B.float(), C.float()).to(x.dtype)
    b, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    y = torch.empty_like(x)
    bp = max(16, triton.next_power_of_2(P))  # tl.dot needs at least 16
    bn = max(16, triton.next_power_of_2(N))
    prec = "ieee" if x.dtype == torch.float32 else "tf32"  # float32: exact products
    dt, A = dt.float().contiguous(), A.float().contiguous()
    B, C = B.to(x.dtype).contiguous(), C.to(x.dtype).contiguous()
    ssd_first_kernel[(b, H)](x.contiguous(), dt, A, B, C, y, L, H, G, P, N,
                             Q=64, BP=bp, BN=bn, PREC=prec, num_stages=1)
    return y
