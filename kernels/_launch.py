"""Small helpers shared by the kernel launchers."""

import os


def interpreting() -> bool:
    """True when kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set by ssm_edu without a GPU)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (Triton block sizes must be powers of two)."""
    return 1 << max(0, (n - 1).bit_length())


def sum_parts(t, dim):
    """``t`` summed over its parts along ``dim``; a view where there is one part (torch's ``sum`` over a
    dimension of size 1 still launches a kernel that copies)."""
    return t.select(dim, 0) if t.shape[dim] == 1 else t.sum(dim)
