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


_TRITON_FIRST = '''
import sys
sys.path.insert(0, {tmp!r})
import early_triton  # imports Triton and decorates a kernel before ssm_edu exists: Triton's library is compiled-mode
import torch
import ssm_edu
gen = torch.Generator().manual_seed(0)
a, b = torch.rand(3, 40, generator=gen), torch.randn(3, 40, generator=gen)
err = ssm_edu.rel_error(ssm_edu.linear_scan(a, b, impl="triton"), ssm_edu.linear_scan(a, b, impl="naive"))
x, dt = torch.randn(1, 20, 2, 4, generator=gen), 0.1 * torch.rand(1, 20, 2, generator=gen)
A, B, C = -torch.rand(2, generator=gen), torch.randn(1, 20, 1, 4, generator=gen), torch.randn(1, 20, 1, 4, generator=gen)
err2 = ssm_edu.rel_error(ssm_edu.ssd(x, dt, A, B, C, chunk_size=8, impl="triton"), ssm_edu.ssd(x, dt, A, B, C, impl="naive"))
print("ERR", err, err2)
'''


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is what runs without a GPU")
def test_triton_imported_before_ssm_edu(tmp_path):
    """A module that imports Triton and decorates a kernel, imported before ssm_edu: impl="triton" still works.

    Without ssm_edu._interpret this fails with Triton's "Cannot call @triton.jit'd outside of the scope of a
    kernel" (Triton's own tl.* library functions were decorated in compiled mode). A fresh interpreter: this
    test process imported ssm_edu long ago.
    """
    import os
    import subprocess
    import sys

    (tmp_path / "early_triton.py").write_text(
        "import triton\nimport triton.language as tl\n\n\n@triton.jit\ndef _early(x_ptr):\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _TRITON_FIRST.format(tmp=str(tmp_path))], capture_output=True,
                         text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    errs = [float(v) for v in out.stdout.split("ERR")[1].split()]
    assert max(errs) < 1e-5, errs


def test_refuses_clearly_when_the_library_cannot_be_interpreted(monkeypatch):
    """If Triton's internals ever defeat ssm_edu._interpret, impl="triton" says what to do before any work."""
    from ssm_edu import _interpret

    monkeypatch.setattr(_interpret, "FAILED", True)
    with pytest.raises(RuntimeError, match="Import ssm_edu first, or set TRITON_INTERPRET=1"):
        ssm_edu.linear_scan(torch.rand(2, 5), torch.rand(2, 5), impl="triton")
