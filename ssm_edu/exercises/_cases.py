"""Random inputs shared by the exercises' case generators (all float64)."""

import torch


def stable_matrix(n: int, gen: torch.Generator) -> torch.Tensor:
    """A random dense A whose eigenvalues have real parts in [-2, -0.1]."""
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    decay = -(0.1 + 1.9 * torch.rand(n, generator=gen, dtype=torch.float64))
    skew = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return Q @ (torch.diag(decay) + 0.5 * (skew - skew.T)) @ Q.T


def vec(n, gen, dtype=torch.float64):
    return torch.randn(n, generator=gen, dtype=dtype)


def times(T, gen, t_max=10.0):
    return torch.sort(t_max * torch.rand(T, generator=gen, dtype=torch.float64)).values
