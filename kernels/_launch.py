"""Small helpers shared by the kernel launchers."""

import os

import torch

# The SM count launchers assume where there is no GPU to ask (the interpreter, offline sm_90 compiles): an H100's.
H100_SMS = 132


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


def num_sms(device) -> int:
    """The streaming multiprocessors of ``device``'s GPU, or ``H100_SMS`` where it is not a CUDA device."""
    device = torch.device(device)
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else H100_SMS
