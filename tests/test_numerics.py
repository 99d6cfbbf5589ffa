"""ssm_edu.numerics: the relative error every comparison uses, and the matrix exponential."""

import pytest
import scipy.linalg
import torch

from ssm_edu.numerics import accumulation_dtype, expm, rel_error, tolerance


def test_rel_error_basics():
    ref = torch.tensor([3.0, 4.0])
    assert rel_error(ref, ref) == 0
    assert rel_error(torch.tensor([3.0, 4.5]), ref) == pytest.approx(0.1)
    assert rel_error(torch.ones(2), torch.zeros(2)) == pytest.approx(2**0.5)  # zero reference: absolute error
    assert not rel_error(torch.tensor([float("nan"), 1.0]), ref) < 1  # NaN never passes
    assert rel_error(torch.tensor([1j]), torch.tensor([1 + 0j])) == pytest.approx(2**0.5)
    with pytest.raises(ValueError, match=r"shapes differ: out \(3,\) vs ref \(2,\)"):
        rel_error(torch.zeros(3), ref)


def test_tolerances_follow_api_md():
    assert tolerance(torch.float32) == 1e-5 and tolerance(torch.bfloat16) == 2e-2
    assert accumulation_dtype(torch.bfloat16) == torch.float32
    assert accumulation_dtype(torch.float64) == torch.float64
    assert accumulation_dtype(torch.complex64) == torch.complex64


@pytest.mark.parametrize("shape", [(4, 4), (1, 4, 4), (1, 1, 3, 3), (5, 2, 2)])
def test_expm_is_accurate_for_single_matrices(shape):
    """pytorch/pytorch#196592: torch's single-matrix path loses ~1e-10 in float64 at
    norms near 0.01-0.05. ssm_edu.numerics.expm must be accurate there, in any batch shape."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for scale in (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 1.0):
        M = torch.randn(shape, generator=gen, dtype=torch.float64)
        M = M / torch.linalg.matrix_norm(M, 1, keepdim=True) * scale
        out = expm(M)
        assert out.shape == M.shape
        ref = torch.from_numpy(scipy.linalg.expm(M.numpy()))
        worst = max(worst, rel_error(out, ref))
    assert worst < 1e-14


def test_expm_has_gradients():
    M = (0.03 * torch.randn(3, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(expm, (M,))
