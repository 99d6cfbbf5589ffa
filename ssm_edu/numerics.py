"""How the book measures agreement between implementations (API.md, "Tolerances").

Every comparison in the chapters and the tests is the relative error
``||out - ref|| / ||ref||`` against a float64 reference, checked against the
tolerance of the *input* dtype.
"""

from __future__ import annotations

import torch

__all__ = ["rel_error", "TOLERANCE", "tolerance", "accumulation_dtype", "expm"]

#: Relative-error bound for each input dtype (API.md). float64 has no bound in
#: the API; 1e-10 is what the book's algorithms reach in practice.
TOLERANCE = {
    torch.float64: 1e-10,
    torch.complex128: 1e-10,
    torch.float32: 1e-5,
    torch.complex64: 1e-5,
    torch.bfloat16: 2e-2,
    torch.float16: 2e-2,
}


def tolerance(dtype: torch.dtype) -> float:
    return TOLERANCE[dtype]


def rel_error(out, ref) -> float:
    """``||out - ref|| / ||ref||`` in float64 (complex128 for complex inputs).

    A reference of norm 0 gives the absolute error instead, so that a zero
    reference can still fail. NaN anywhere gives ``nan``, which fails every
    ``<`` comparison.
    """
    out, ref = torch.as_tensor(out), torch.as_tensor(ref)
    if out.shape != ref.shape:
        raise ValueError(f"rel_error: shapes differ: out {tuple(out.shape)} vs ref {tuple(ref.shape)}")
    wide = torch.complex128 if (out.is_complex() or ref.is_complex()) else torch.float64
    out, ref = out.detach().to("cpu", wide), ref.detach().to("cpu", wide)
    diff = torch.linalg.vector_norm(out - ref).item()
    norm = torch.linalg.vector_norm(ref).item()
    return diff / norm if norm > 0 else diff


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (complex128 likewise); everything else accumulates in float32."""
    if dtype in (torch.float64, torch.complex128):
        return dtype
    return torch.complex64 if dtype.is_complex else torch.float32


def expm(M: torch.Tensor) -> torch.Tensor:
    """The matrix exponential of ``M`` (..., N, N), always through torch's batched path.

    ``torch.linalg.matrix_exp`` evaluates one matrix (or a batch of one) with a
    Taylor polynomial chosen by the matrix's norm, and its degree-8 polynomial
    has a wrong coefficient (pytorch/pytorch#196592, fixed upstream after torch
    2.14): for norms near 0.01-0.05 the result is off by about 1e-10 in float64
    and 1e-5 in float32. Batches of two or more always use the accurate
    degree-18 polynomial, so a single matrix is evaluated as a batch of two
    copies. Chapter 2 shows the effect.
    """
    if M.shape[:-2].numel() == 1:
        one = M.reshape(1, *M.shape[-2:])
        return torch.linalg.matrix_exp(one.expand(2, *one.shape[1:]))[0].reshape(M.shape)
    return torch.linalg.matrix_exp(M)
