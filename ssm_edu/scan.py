"""First-order linear recurrences and parallel scans (chapter 6).

Symbols -> code:  h_t -> h[..., t],  a_t (the decay, Ā of a diagonal SSM) -> a,
b_t (the input, B̄ u_t) -> b,  h_{-1} -> h0.   Shapes: L length, ... any batch
dims (for a diagonal SSM: batch, channels and state modes).

    h_t = a_t h_{t-1} + b_t,        h_{-1} = h0 (zero by default)

Each step is the affine map x -> a_t x + b_t; a run of steps is their
composition, again affine. Written as pairs, with (a, b) applied first,

    (a, b) ∘ (a', b') = (a' a, a' b + b')

is associative (composition of maps is), so any bracketing of the L steps
gives the same h: that is what lets a parallel scan replace the loop.

* ``naive``: the loop, one step per iteration (the specification).
* ``vectorized``: a work-efficient scan in the style of Blelloch (1990):
  combine neighbouring pairs, scan the half-length sequence recursively, fill
  in the even positions. O(L) work, 2 log2 L depth.
* ``hillis_steele``: the Hillis–Steele scan: log2 L rounds, in round j every
  position combines with the one 2^j back. O(L log L) work, log2 L depth.
* ``blocked``: scan inside blocks of ``block`` steps (in parallel over
  blocks), then carry the state from block to block: the structure of the
  Triton kernel (``kernels/scan.py``) and of chunked scans (chapter 8).
* ``triton``: ``tl.associative_scan`` inside a block, a carry across blocks.

Bad input (a wrong rank, mismatched sizes, tensors on different devices, an
unsupported dtype) raises ValueError or TypeError, naming the argument,
before any work. NaN and inf in the inputs are not checked for (the check
would cost a GPU synchronisation per call): they propagate into the outputs
that depend on them (a NaN in a or b at step t makes h NaN from t on).
"""

from __future__ import annotations

import torch

from ._dispatch import dispatch, float32_kernel
from ._validate import Shapes, check_dtype, check_same_device
from .numerics import accumulation_dtype

__all__ = [
    "linear_scan",
    "linear_scan_naive",
    "linear_scan_vectorized",
    "linear_scan_hillis_steele",
    "linear_scan_blocked",
    "scan_combine",
]

_REAL = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_ANY = _REAL + (torch.complex64, torch.complex128)


def scan_combine(left, right):
    """The scan operator: ``left`` = (a, b) applied first, then ``right`` = (a', b').

    x -> a' (a x + b) + b' = (a' a) x + (a' b + b'). Elementwise on tensors.
    """
    (a1, b1), (a2, b2) = left, right
    return a2 * a1, a2 * b1 + b2


def _fold_h0(a, b, h0):
    """h0 enters only through the first step: b_0 <- a_0 h0 + b_0."""
    if h0 is None:
        return b
    return torch.cat([(a[..., :1] * h0.unsqueeze(-1) + b[..., :1]), b[..., 1:]], dim=-1)


def linear_scan_naive(a, b, h0=None):
    """The specification: h_t = a_t h_{t-1} + b_t, one t per iteration.

    a, b (..., L), h0 (...) or None -> h (..., L). L sequential steps.
    """
    h = torch.zeros_like(b[..., 0]) if h0 is None else h0  # (...)
    hs = []
    for t in range(b.shape[-1]):
        h = a[..., t] * h + b[..., t]  # (...)
        hs.append(h)
    return torch.stack(hs, dim=-1)  # (..., L)


def _blelloch(a, b):
    """Inclusive scan of the pairs (a_t, b_t); returns only the b part (= h with h_{-1} = 0)."""
    L = b.shape[-1]
    if L == 1:
        return b
    if L % 2:  # pad with the identity (1, 0): it changes nothing
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
        b = torch.cat([b, torch.zeros_like(b[..., :1])], dim=-1)
    a_even, a_odd = a[..., 0::2], a[..., 1::2]  # (..., L'/2)
    b_even, b_odd = b[..., 0::2], b[..., 1::2]
    # up: combine each pair (2k, 2k+1) into one step, then scan the half-length sequence
    h_odd = _blelloch(a_odd * a_even, a_odd * b_even + b_odd)  # h at 1, 3, 5, ...
    # down: the even positions 2k need h_{2k-1} (h_{-1} = 0) and one more step
    h_prev = torch.cat([torch.zeros_like(h_odd[..., :1]), h_odd[..., :-1]], dim=-1)
    h_even = a_even * h_prev + b_even  # h at 0, 2, 4, ...
    return torch.stack([h_even, h_odd], dim=-1).flatten(-2)[..., :L]  # interleave -> (..., L)


def linear_scan_vectorized(a, b, h0=None):
    """Work-efficient parallel scan (Blelloch-style odd–even recursion).

    a, b (..., L), h0 (...) or None -> h (..., L). Each level halves the
    length: 2 log2 L levels of elementwise tensor operations, O(L) work in
    total. Not a loop over t.
    """
    return _blelloch(a, _fold_h0(a, b, h0))


def linear_scan_hillis_steele(a, b, h0=None):
    """Hillis–Steele scan: in round j each position absorbs the one 2^j steps back.

    a, b (..., L), h0 (...) or None -> h (..., L). After round j, (A_t, B_t)
    is the composition of steps max(0, t - 2^{j+1} + 1) .. t. log2 L rounds of
    L combines each: O(L log L) work, log2 L depth.
    """
    b = _fold_h0(a, b, h0)
    s = 1
    while s < b.shape[-1]:
        a_prev = torch.cat([torch.ones_like(a[..., :s]), a[..., :-s]], dim=-1)  # identity beyond the start
        b_prev = torch.cat([torch.zeros_like(b[..., :s]), b[..., :-s]], dim=-1)
        a, b = scan_combine((a_prev, b_prev), (a, b))
        s *= 2
    return b


def linear_scan_blocked(a, b, h0=None, block=64):
    """Scan inside blocks of ``block`` steps, then carry the state across blocks.

    a, b (..., L), h0 (...) or None -> h (..., L). Inside block k, with the
    carry c_k = h at the end of block k-1, h_t = (a_{start}..a_t) c_k + h_t^local;
    the carries themselves obey c_{k+1} = A_k c_k + h^local_{end of block k}
    with A_k the product of the block's a: a scan of length L / block.
    """
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"linear_scan_blocked: block must be an int >= 1; got {block!r}")
    L = b.shape[-1]
    n = -(-L // block)
    pad = n * block - L
    if pad:
        a = torch.cat([a, torch.ones_like(a[..., :1]).expand(*a.shape[:-1], pad)], dim=-1)
        b = torch.cat([b, torch.zeros_like(b[..., :1]).expand(*b.shape[:-1], pad)], dim=-1)
    a_blk = a.unflatten(-1, (n, block))  # (..., n, block)
    b_blk = b.unflatten(-1, (n, block))
    h_local = _blelloch(a_blk, b_blk)  # (..., n, block): each block from a zero state
    a_cum = torch.cumprod(a_blk, dim=-1)  # (..., n, block): a_start .. a_t
    carry_in = _blelloch(a_cum[..., -1], h_local[..., -1])  # (..., n): h at the end of each block
    carry_in = torch.cat([torch.zeros_like(carry_in[..., :1]), carry_in[..., :-1]], dim=-1)  # c_k
    if h0 is not None:
        carry_in = carry_in + torch.cat([torch.ones_like(a_cum[..., :1, -1]), torch.cumprod(a_cum[..., :-1, -1], -1)], -1) * h0.unsqueeze(-1)
    h = h_local + a_cum * carry_in.unsqueeze(-1)  # (..., n, block)
    return h.flatten(-2)[..., :L]


def linear_scan(a, b, h0=None, impl="auto"):
    """First-order linear recurrence along the last axis (API.md).

    h[..., t] = a[..., t] * h[..., t-1] + b[..., t], with h[..., -1] = h0.

    Args:
        a: (..., L) decays (Ā of a diagonal SSM), real or complex.
        b: (..., L) inputs (B̄ u), same shape as a.
        h0: (...) initial state, or None for zero.
        impl: ``"naive"`` (loop), ``"vectorized"`` (work-efficient parallel
            scan), ``"hillis_steele"``, ``"blocked"`` (blocks of 64 with a
            carry), ``"triton"`` (real float32/bfloat16/float16 only;
            differentiable) or ``"auto"`` (triton for real CUDA tensors below
            float64, else vectorized).
    Returns:
        h (..., L) in the promoted dtype of a, b and h0; accumulation in
        float32 (float64 / complex128 for double inputs).
    """
    op = "linear_scan"
    fn = dispatch(op, impl, (a, b, h0), naive=linear_scan_naive, vectorized=linear_scan_vectorized,
                  hillis_steele=linear_scan_hillis_steele, blocked=linear_scan_blocked,
                  triton="scan:linear_scan_triton")
    shapes = Shapes(op)
    shapes.check("a", a, "... L")
    shapes.check("b", b, "... L")
    shapes.nonempty("L")
    if h0 is not None:
        shapes.check("h0", h0, "...")
    check_same_device(op, a=a, b=b, h0=h0)
    for name, x in (("a", a), ("b", b), ("h0", h0)):
        if x is not None:
            check_dtype(op, name, x, _ANY)
    out = torch.promote_types(a.dtype, b.dtype)
    if h0 is not None:
        out = torch.promote_types(out, h0.dtype)
    name = str(out).replace("torch.", "")
    if out.is_complex and impl == "triton":  # the kernel computes real float32
        raise ValueError(f"{op}: impl='triton' supports real inputs only; got {name} "
                         "(use impl='vectorized' for complex a, b)")
    # complex inputs also take the vectorized form under "auto" (the explicit "triton" was refused above)
    fn = float32_kernel(op, impl, fn, double=out.is_complex or out == torch.float64, what=name,
                        fallback=linear_scan_vectorized)
    if impl == "triton" or (impl == "auto" and fn is not linear_scan_vectorized):
        return fn(a.to(out), b.to(out), None if h0 is None else h0.to(out))
    work = accumulation_dtype(out)
    return fn(a.to(work), b.to(work), None if h0 is None else h0.to(work)).to(out)
