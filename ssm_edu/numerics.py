"""How the book measures agreement between implementations (API.md, "Tolerances").

Every comparison in the chapters and the tests is the relative error
``||out - ref|| / ||ref||`` against a float64 reference, checked against the
tolerance of the *input* dtype.
"""

from __future__ import annotations

import torch

__all__ = ["rel_error", "TOLERANCE", "tolerance", "accumulation_dtype"]

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
