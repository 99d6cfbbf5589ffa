"""Checked exercise of the Triton primer (chapters/00_triton_primer.ipynb)."""

import torch

from . import Exercise, register


def _logsumexp_cases(gen):
    def x(rows, cols, shift=0.0, scale=3.0):
        return shift + scale * torch.randn(rows, cols, generator=gen, dtype=torch.float64)

    # Column counts that are not powers of two catch masked lanes loaded with
    # the wrong `other`; the shifted rows catch a missing max subtraction.
    return [
        ("a single column: x (3, 1)", (x(3, 1),)),
        ("x (1, 16), one row, a power of two", (x(1, 16),)),
        ("x (4, 17), odd width", (x(4, 17),)),
        ("x (5, 100)", (x(5, 100),)),
        ("x (2, 1000), wider than one small block", (x(2, 1000),)),
        ("large values, x + 500: exp overflows unless the row maximum is subtracted", (x(3, 33, shift=500.0),)),
        ("very negative values, x - 500: exp underflows to 0 unless the maximum is subtracted", (x(3, 7, shift=-500.0),)),
    ]


register(Exercise(
    name="primer.logsumexp",
    outputs=("lse",),
    signature="logsumexp(x) -> lse",
    task="row-wise log Σ_j exp(x[i, j]) of a CPU tensor x (R, C), through your Triton kernel; return (R,) on the CPU",
    reference=lambda x: torch.logsumexp(x, dim=-1),
    cases=_logsumexp_cases,
    hint="Load a row with a mask; lanes past the row's end must not change the result: what value of `other` "
    "adds nothing to a max, and exp of what is 0? Compute m = max, then m + log(sum(exp(x - m))). The check "
    "passes CPU float64 tensors: move x to your device (float32 is fine) and the result back to the CPU.",
))
