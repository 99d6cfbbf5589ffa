"""Small helpers shared by the kernel launchers."""

import os


def interpreting() -> bool:
    """True when kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set by ssm_edu without a GPU)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (Triton block sizes must be powers of two)."""
    return 1 << max(0, (n - 1).bit_length())
