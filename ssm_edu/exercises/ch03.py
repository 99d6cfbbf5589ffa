"""Checked exercises of chapter 3 (recurrence and convolution)."""

import torch

from ..convolution import causal_conv, ssm_kernel
from . import Exercise, register
from ._cases import vec


def _contractive(n, gen, radius=0.95):
    M = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return radius * M / torch.linalg.matrix_norm(M, ord=2)


def _ch03_kernel_cases(gen):
    cases = [
        ("N = 1, L = 1", (_contractive(1, gen), vec(1, gen), vec(1, gen), 1)),
        ("N = 4, L = 50", (_contractive(4, gen), vec(4, gen), vec(4, gen), 50)),
        ("N = 7, L = 33", (_contractive(7, gen), vec(7, gen), vec(7, gen), 33)),
    ]
    r, theta = 0.97, 0.3  # a damped rotation: an oscillating kernel
    rot = r * torch.tensor([[torch.cos(torch.tensor(theta)), -torch.sin(torch.tensor(theta))],
                            [torch.sin(torch.tensor(theta)), torch.cos(torch.tensor(theta))]], dtype=torch.float64)
    cases.append(("a damped rotation, N = 2, L = 80", (rot, vec(2, gen), vec(2, gen), 80)))
    jordan = torch.tensor([[0.9, 1.0], [0.0, 0.9]], dtype=torch.float64)
    cases.append(("a Jordan block (not diagonalisable), L = 40", (jordan, vec(2, gen), vec(2, gen), 40)))
    return cases


def _ch03_fft_cases(gen):
    def case(b, H, L):
        u = torch.randn(b, H, L, generator=gen, dtype=torch.float64)
        K = torch.randn(H, L, generator=gen, dtype=torch.float64) * torch.exp(-torch.arange(L, dtype=torch.float64) / max(L / 4, 1))
        return u, K

    return [
        ("a single channel, L = 1", case(1, 1, 1)),
        ("b = 2, H = 3, L = 64", case(2, 3, 64)),
        ("odd length, b = 1, H = 4, L = 101", case(1, 4, 101)),
        ("b = 3, H = 2, L = 257", case(3, 2, 257)),
    ]


register(Exercise(
    name="ch03.ssm_kernel",
    signature="ssm_kernel(Ab, Bb, C, L) -> K",
    task="the kernel K_k = C Ā^k B̄ for k = 0..L-1 of a dense system Ab (N, N), Bb (N,), C (N,)",
    reference=lambda Ab, Bb, C, L: ssm_kernel(Ab, Bb, C, L, impl="naive"),
    cases=_ch03_kernel_cases,
    hint="Unroll x_k = Ā x_{k-1} + B̄ u_k from x_{-1} = 0 with a unit impulse u_0 = 1: the first "
    "output is y_0 = C B̄, so the kernel starts at Ā^0. Keep a vector x = Ā^k B̄ and multiply it by Ā "
    "once per step instead of forming matrix powers.",
))

register(Exercise(
    name="ch03.fft_conv",
    signature="fft_conv(u, K) -> y",
    task="causal convolution by FFT: u (b, H, L), K (H, L) -> y (b, H, L), y_t = sum_{s<=t} K_{t-s} u_s",
    reference=lambda u, K: causal_conv(u, K, impl="naive"),
    cases=_ch03_fft_cases,
    hint="A product of length-n DFTs is a circular convolution: output t also collects K_{t-s+n} u_s "
    "for s > t. Zero-pad both signals to n >= 2L - 1 (torch.fft.rfft(x, n=2 * L)) so the wrapped terms "
    "meet only zeros, then keep the first L outputs.",
))
