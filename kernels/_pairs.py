"""Angle pairs moved whole: the even and odd entries of rows of pairs, read and written as contiguous rows.

Mamba-3's rotations act on pairs (2i, 2i + 1) of B, C, k, q and the state. Reading the even entries and the
odd ones apart, every other element, makes each access cover half of every memory sector it touches (for
bfloat16, one 2-byte element at a time). These helpers read a row's entries as one contiguous block and
split it into its even and odd entries in registers (``tl.reshape`` to (rows, pairs, 2), ``tl.split``), and
join them back for a store. ``pairs_at`` and ``put_pairs`` take either access (JOINED or every other element),
so that a kernel keeps both forms behind one flag.
"""

import triton
import triton.language as tl


@triton.jit
def load_pairs(ptr, rows, rows_ok, c0, N, ROWS: tl.constexpr, PAIRS: tl.constexpr):
    """Entries c0 .. c0 + 2 PAIRS - 1 (those below N) of the rows that start at element offsets ``rows``
    (ROWS,): their even and their odd entries, float32 (ROWS, PAIRS) each."""
    c = c0 + tl.arange(0, 2 * PAIRS)
    v = tl.load(ptr + rows[:, None] + c[None, :], mask=rows_ok[:, None] & (c < N)[None, :], other=0.0)
    return tl.split(tl.reshape(v.to(tl.float32), (ROWS, PAIRS, 2)))


@triton.jit
def pairs_block(rows, rows_ok, c0, N, even, odd, ROWS: tl.constexpr, PAIRS: tl.constexpr):
    """``load_pairs``'s inverse, for a store or an atomic add: the offsets, the mask and the values of ``even``
    and ``odd`` (ROWS, PAIRS) put back in place, (ROWS, 2 PAIRS) each."""
    c = c0 + tl.arange(0, 2 * PAIRS)
    return (rows[:, None] + c[None, :], rows_ok[:, None] & (c < N)[None, :],
            tl.reshape(tl.join(even, odd), (ROWS, 2 * PAIRS)))


@triton.jit
def pairs_at(ptr, rows, rows_ok, c0, i, m, N, JOINED: tl.constexpr, ROWS: tl.constexpr, PAIRS: tl.constexpr):
    """The pairs ``i`` (PAIRS,) of the rows that start at element offsets ``rows`` (ROWS,), ``m`` the mask of
    (rows, pairs): their even and their odd entries, float32 (ROWS, PAIRS) each. JOINED: each row's 2 PAIRS
    entries from c0 = 2 i[0] on, read as one contiguous block (``load_pairs``); else the even and the odd
    entries read apart, every other element."""
    if JOINED:
        return load_pairs(ptr, rows, rows_ok, c0, N, ROWS, PAIRS)
    offs = rows[:, None] + 2 * i[None, :]
    even = tl.load(ptr + offs, mask=m, other=0.0).to(tl.float32)
    odd = tl.load(ptr + offs + 1, mask=m, other=0.0).to(tl.float32)
    return even, odd


@triton.jit
def put_pairs(ptr, rows, rows_ok, c0, i, m, N, even, odd, JOINED: tl.constexpr, ATOMIC: tl.constexpr,
              ROWS: tl.constexpr, PAIRS: tl.constexpr):
    """``pairs_at``'s inverse: ``even`` and ``odd`` (ROWS, PAIRS) stored in place in ptr's dtype, or with ATOMIC
    added to what is there (float32), as contiguous rows (JOINED) or every other element."""
    if JOINED:
        offs, mj, v = pairs_block(rows, rows_ok, c0, N, even, odd, ROWS, PAIRS)
        if ATOMIC:
            tl.atomic_add(ptr + offs, v, mask=mj)
        else:
            tl.store(ptr + offs, v.to(ptr.dtype.element_ty), mask=mj)
    else:
        offs = rows[:, None] + 2 * i[None, :]
        if ATOMIC:
            tl.atomic_add(ptr + offs, even, mask=m)
            tl.atomic_add(ptr + offs + 1, odd, mask=m)
        else:
            tl.store(ptr + offs, even.to(ptr.dtype.element_ty), mask=m)
            tl.store(ptr + offs + 1, odd.to(ptr.dtype.element_ty), mask=m)
