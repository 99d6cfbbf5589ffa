"""Checked exercises of chapter 5 (S4)."""

import torch

from ..s4 import cauchy
from . import Exercise, register


def _ch05_cauchy_cases(gen):
    def c(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=gen, dtype=torch.complex128)

    return [
        ("one mode, one point: N = 1, L = 1", (c(1), c(1, scale=3.0), c(1))),
        ("N = 8, L = 16", (c(8), c(16, scale=3.0), c(8))),
        ("a batch of rows: v, w (3, 5), L = 7", (c(3, 5), c(7, scale=3.0), c(3, 5))),
        ("batch (2, 4), N = 16, L = 33", (c(2, 4, 16), c(33, scale=3.0), c(2, 4, 16))),
    ]


register(Exercise(
    name="ch05.cauchy",
    signature="cauchy(v, z, w) -> out",
    task="the Cauchy product out[..., l] = sum_n v[..., n] / (z[l] - w[..., n]); v, w (..., N) complex, z (L,) complex",
    reference=lambda v, z, w: cauchy(v, z, w, impl="naive"),
    cases=_ch05_cauchy_cases,
    hint="Broadcast z against w so that the difference has shape (..., L, N): z[:, None] - w[..., None, :]. "
    "Divide v (placed as v[..., None, :]) by it and sum over the last axis, n. The output has one entry "
    "per evaluation point z_l, not per mode.",
))
