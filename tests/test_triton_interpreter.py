"""The Triton set-up every kernel test relies on.

On a machine without a GPU, ssm_edu sets TRITON_INTERPRET=1 before any kernel
is decorated, so `impl="triton"` runs the kernel source in Triton's CPU
interpreter. This checks that the pinned Triton really does that here. The
kernel tests of each operation live in that operation's test file.
"""

import pytest
import torch

import ssm_edu  # noqa: F401  (sets TRITON_INTERPRET before triton.jit runs)

# requirements.txt pins Triton: a missing Triton is a broken install, so this
# imports it outright rather than skipping.
import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _exp_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    tl.store(y_ptr + offs, tl.exp(x), mask=mask)


@pytest.mark.parametrize("n", [1, 37, 256])
def test_kernel_runs_with_masking(n):
    device = ssm_edu.default_device()
    x = torch.randn(n, device=device)
    y = torch.full_like(x, float("nan"))  # poison: every element must be written
    _exp_kernel[(triton.cdiv(n, 32),)](x, y, n, BLOCK=32)
    assert ssm_edu.rel_error(y, x.double().exp()) < 1e-6
