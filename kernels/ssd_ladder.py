"""The ladder from the first SSD kernel to the library's (chapter 8).

Each rung is the previous one with one change, kept as its own function so that the
chapter can show the change as a diff of the source and the sweep
(``benchmarks/sweep_ssd.py``) can time it. Every rung computes the same function as
``ssd_first`` (Δ = dt as given, no D, gate or initial state) and is tested against
the loop like every tier (tests/test_ssd_first.py).

0. ``ssd_first``: one program per (batch, head) walks the chunks with the state in
   registers; the products on the tensor cores; C Bᵀ computed by every head.
1. ``ssd_rung1``, C Bᵀ once per group: C Bᵀ does not depend on the head, so a small
   kernel (``kernels/ssd.py``'s ``_ssd_cb``) computes it once per chunk and group and
   every head of the group reads it instead of recomputing it.
2. ``ssd_rung2``, exp2: the exponential unit computes 2^x, so exp(x) is a multiply
   and an exp2; with log2(e) folded into A once, the decays are exp2 of sums.
3. the library kernel ``ssd_fwd`` with one pipeline stage: the same loop with the
   options of ``ssd`` (D, gate, dt_bias, initial state), which cost nothing when
   they are absent, blocks of P and segments of L for small batches.
4. ``ssd_fwd`` as it runs by default: two pipeline stages, so that the next chunk's
   loads are in flight while this chunk's products run.

``RUNGS`` lists them with the change and its reason, for the sweep and the chapter.
"""

import torch
import triton
import triton.language as tl

from ._launch import interpreting
from .ssd import _ssd_cb, ssd_fwd
from .ssd_first import ssd_first, ssd_first_kernel

__all__ = ["ssd_rung1", "ssd_rung2", "ssd_rung1_kernel", "ssd_rung2_kernel", "chunk_cb",
           "RUNGS"]


@triton.jit
def ssd_rung1_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, CB_ptr, y_ptr, L, H, G, P, N,
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
    n_chunks = tl.cdiv(L, Q)
    for k in range(0, n_chunks):
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
        cb = ((b * n_chunks + k) * G + g) * Q * Q  # chunk k's C Bᵀ in (b, c, G, Q, Q)
        CB = tl.load(CB_ptr + cb + s[:, None] * Q + s[None, :]).to(tl.float32)
        W = (CB * M * dt[None, :]).to(X.dtype)
        Y = tl.dot(W, X, input_precision=PREC)
        Y += tl.dot(Ck, S.to(X.dtype), input_precision=PREC) * tl.exp(a)[:, None]
        wB = Bk.to(tl.float32) * (tl.exp(a_end - a) * dt)[:, None]  # (Q, N)
        wB = tl.trans(wB.to(X.dtype))
        S = S * tl.exp(a_end) + tl.dot(wB, X, input_precision=PREC)
        tl.store(y_ptr + xy, Y.to(y_ptr.dtype.element_ty), mask=x_ok)


@triton.jit
def ssd_rung2_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, CB_ptr, y_ptr, L, H, G, P, N,
                     Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                     PREC: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    g = h // (H // G)  # the group of B and C that head h reads
    s = tl.arange(0, Q)  # a step within the chunk
    p = tl.arange(0, BP)
    n = tl.arange(0, BN)
    A2 = tl.load(A_ptr + h) * 1.4426950408889634  # log2(e) A: exp(x) = exp2(x log2 e)
    S = tl.zeros([BN, BP], dtype=tl.float32)  # the state, transposed: (N, P)
    n_chunks = tl.cdiv(L, Q)
    for k in range(0, n_chunks):
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

        a = tl.cumsum(dt * A2, axis=0)  # (Q,) a⁺_t log2(e)
        a_end = tl.sum(dt * A2, axis=0)  # the chunk's total, log2(e) times
        causal = s[:, None] >= s[None, :]  # (Q, Q): t >= s
        M = tl.where(causal, tl.exp2(a[:, None] - a[None, :]), 0.0)
        cb = ((b * n_chunks + k) * G + g) * Q * Q  # chunk k's C Bᵀ in (b, c, G, Q, Q)
        CB = tl.load(CB_ptr + cb + s[:, None] * Q + s[None, :]).to(tl.float32)
        W = (CB * M * dt[None, :]).to(X.dtype)
        Y = tl.dot(W, X, input_precision=PREC)
        Y += tl.dot(Ck, S.to(X.dtype), input_precision=PREC) * tl.exp2(a)[:, None]
        wB = Bk.to(tl.float32) * (tl.exp2(a_end - a) * dt)[:, None]  # (Q, N)
        wB = tl.trans(wB.to(X.dtype))
        S = S * tl.exp2(a_end) + tl.dot(wB, X, input_precision=PREC)
        tl.store(y_ptr + xy, Y.to(y_ptr.dtype.element_ty), mask=x_ok)


def _blocks(x, B):
    b, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    bp = max(16, triton.next_power_of_2(P))  # tl.dot needs at least 16
    bn = max(16, triton.next_power_of_2(N))
    prec = "ieee" if x.dtype == torch.float32 else "tf32"  # float32: exact products
    return b, L, H, P, G, N, bp, bn, prec


def chunk_cb(B, C, Q=64):
    """C Bᵀ of every chunk and group, (b, c, G, Q, Q) in B's dtype (``_ssd_cb``)."""
    b, L, G, N = B.shape
    n_chunks = triton.cdiv(L, Q)
    CB = torch.empty(b, n_chunks, G, Q, Q, device=B.device, dtype=B.dtype)
    _ssd_cb[(b * n_chunks, G)](B.contiguous(), C.contiguous(), CB, L, G, N, n_chunks,
                               IEEE=B.dtype == torch.float32, BLOCK_Q=Q,
                               BLOCK_N=min(max(16, triton.next_power_of_2(N)), 128))
    return CB


def ssd_rung1(x, dt, A, B, C, CB=None):
    """Rung 1 (C Bᵀ once per group): ``ssd_first``'s arguments, and C Bᵀ of every chunk
    and group (b, c, G, 64, 64) if already computed (``chunk_cb``)."""
    if interpreting() and x.dtype != torch.float32:  # no bfloat16 in the interpreter
        return ssd_rung1(x.float(), dt, A, B.float(), C.float(), CB).to(x.dtype)
    b, L, H, P, G, N, bp, bn, prec = _blocks(x, B)
    y = torch.empty_like(x)
    dt, A = dt.float().contiguous(), A.float().contiguous()
    B, C = B.to(x.dtype).contiguous(), C.to(x.dtype).contiguous()
    CB = chunk_cb(B, C) if CB is None else CB.to(x.dtype).contiguous()
    ssd_rung1_kernel[(b, H)](x.contiguous(), dt, A, B, C, CB, y, L, H, G, P, N,
                             Q=64, BP=bp, BN=bn, PREC=prec, num_stages=1)
    return y


def ssd_rung2(x, dt, A, B, C, CB=None):
    """Rung 2 (exp2): the arguments of ``ssd_rung1``."""
    if interpreting() and x.dtype != torch.float32:  # no bfloat16 in the interpreter
        return ssd_rung2(x.float(), dt, A, B.float(), C.float(), CB).to(x.dtype)
    b, L, H, P, G, N, bp, bn, prec = _blocks(x, B)
    y = torch.empty_like(x)
    dt, A = dt.float().contiguous(), A.float().contiguous()
    B, C = B.to(x.dtype).contiguous(), C.to(x.dtype).contiguous()
    CB = chunk_cb(B, C) if CB is None else CB.to(x.dtype).contiguous()
    ssd_rung2_kernel[(b, H)](x.contiguous(), dt, A, B, C, CB, y, L, H, G, P, N,
                             Q=64, BP=bp, BN=bn, PREC=prec, num_stages=1)
    return y


def _library(num_stages=None):
    def run(x, dt, A, B, C):
        return ssd_fwd(x, dt, A, B, C, chunk_size=64, num_stages=num_stages)[0]

    return run


# (name, the change, its reason, the function, the kernel whose source the rung changes)
RUNGS = [
    ("first kernel", "one program per (batch, head); C Bᵀ computed by every head",
     "the smallest correct kernel", ssd_first, ssd_first_kernel),
    ("C Bᵀ per group", "C Bᵀ computed once per chunk and group, read by every head",
     "it does not depend on the head: with one group, 127 of 128 heads repeated it",
     ssd_rung1, ssd_rung1_kernel),
    ("exp2", "exp2 with log2(e) folded into A",
     "the exponential unit computes 2^x: exp(x) costs a multiply more", ssd_rung2,
     ssd_rung2_kernel),
    ("library kernel", "the library's kernel: the options of ssd, P blocks, segments",
     "the same algorithm: the options cost nothing when absent", _library(num_stages=1),
     None),
    ("pipelined loads", "two pipeline stages (the default)",
     "latency: the next chunk's loads overlap this chunk's products", _library(), None),
]
