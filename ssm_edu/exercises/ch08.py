"""Checked exercises of chapter 8 (Mamba-2 and state space duality)."""

import torch

from ..ssd import segsum
from . import Exercise, register


def _decays(shape, gen, scale=1.0, dtype=torch.float64):
    """Log-decays a_t = Δ_t A <= 0, as SSD makes them."""
    return (-scale * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype)


def _segsum_cases(gen):
    zero_steps = _decays((2, 33), gen)
    zero_steps[:, ::4] = 0.0  # a_t = 0: steps that do not decay (Δ = 0, as in a padded chunk)
    return [
        ("a single step: length 1", (_decays((1,), gen),)),
        ("a batch (2, 3) of length 7", (_decays((2, 3, 7), gen),)),
        ("odd length 33 with some a_t = 0", (zero_steps,)),
        ("one sequence of length 64, large decays (up to 8 per step)", (_decays((64,), gen, scale=8.0),)),
        # long float32 sequences: the prefix sums reach -150 and -750, where the
        # difference of two prefix sums has lost about 5 of float32's 7 digits
        ("float32, batch 2, length 300", (_decays((2, 300), gen, dtype=torch.float32),)),
        ("float32, length 1500", (_decays((1500,), gen, dtype=torch.float32),)),
    ]


register(Exercise(
    name="ch08.segsum",
    signature="mask(a) -> M, i.e. lambda a: torch.exp(my_segsum(a))",
    task="a stable segment sum for log-decays a (..., T): M (..., T, T) = exp(Σ_{r=s+1..t} a_r), 0 above the diagonal",
    # float64 reference on the same (rounded) inputs, returned in the input's dtype
    reference=lambda a: torch.exp(segsum(a.double())).to(a.dtype),
    cases=_segsum_cases,
    hint="Sum each segment from its own terms: put a_r in column s for every r > s (an (..., T, T) tensor "
    "masked below the diagonal), take a cumulative sum down the columns, and set the entries above the "
    "diagonal to -inf so that exp gives exact zeros. A difference of two prefix sums, cs_t - cs_s, is "
    "exact on paper but cancels catastrophically in float32 once the prefix sums are large.",
    tol=5e-7,
))
