"""Interactive explorers (ipywidgets) used by the chapters.

Each explorer draws with the same ``ssm_edu.plots.draw_*`` function as the
static figure printed beside it, so a reader of the rendered book (who has no
running kernel) sees exactly what the explorer shows at its default settings.
"""

from __future__ import annotations

import io

import ipywidgets as W
import matplotlib.pyplot as plt
import torch

from . import plots
from .continuous import damped_oscillator, step_response
from .discretize import METHODS, discretize

__all__ = [
    "eigenvalue_explorer",  # chapter 1
    "delta_explorer", "discrete_step_figure",  # chapter 2
    "kernel_explorer", "kernel_figure",  # chapter 3
    "hippo_explorer", "hippo_reconstruction_figure",  # chapter 4
    "s4d_explorer", "s4d_figure",  # chapter 6
    "s4_kernel_explorer", "s4_kernel_figure",  # chapter 5
]


def _slider(cls, value, lo, hi, step, description):
    # continuous_update=False: redraw when the slider is released, not at every pixel
    return cls(value=value, min=lo, max=hi, step=step, description=description, continuous_update=False,
               style={"description_width": "initial"})


def _figure_png(draw, values) -> bytes:
    """Run ``draw(*values)`` (which opens its own figure) and return the figure as PNG."""
    before = set(plt.get_fignums())
    draw(*values)
    fig = plt.figure(max(set(plt.get_fignums()) - before))  # the figure draw() opened
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)  # closed, so the inline backend does not show it a second time
    return buf.getvalue()


def _explorer(draw, *controls):
    """A row of controls above a picture that ``draw(*values)`` draws.

    The picture is an ``ipywidgets.Image`` holding the figure as PNG and
    redrawn whenever a control changes. ``draw`` is the same function that
    draws the chapter's static figure. An Image rather than an Output widget:
    when the book is built, nbclient mirrors every output captured by an
    Output widget back to the kernel over the shell channel, and that traffic
    can leave the cell's own reply unread until the cell times out
    (jupyter/nbclient#312; seen on a 16-core GPU machine). The Image's PNG is
    also what the rendered page shows, from the saved widget state.
    """
    image = W.Image(value=_figure_png(draw, [c.value for c in controls]), format="png",
                    layout=W.Layout(max_width="100%"))

    def redraw(*_):
        image.value = _figure_png(draw, [c.value for c in controls])

    for c in controls:
        c.observe(redraw, "value")
    return W.VBox([W.HBox(list(controls)), image])


def _modes_figure(re, im):
    _, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [1, 1.6]})
    plots.draw_modes(a, b, re, im)


def eigenvalue_explorer(re: float = -0.3, im: float = 2.0):
    """Chapter 1: move a pair of eigenvalues re ± i·im and watch the impulse response."""
    return _explorer(_modes_figure,
                     _slider(W.FloatSlider, re, -2.0, 0.5, 0.05, "Re λ [1/s]"),
                     _slider(W.FloatSlider, im, 0.0, 6.0, 0.1, "Im λ [rad/s]"))


def discrete_step_figure(log10_dt: float, method: str, axes=None, omega0: float = 4.0, zeta: float = 0.2, t_max: float = 4.0):
    """The damped oscillator's step response, exact against a discretised recurrence.

    Left: the continuous step response and the recurrence's samples at
    t_k = kΔ. Right: the eigenvalues of Ā against the unit circle.
    """
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [1.6, 1]})
    A, B, C, D = damped_oscillator(omega0, zeta)
    dt = 10.0**log10_dt
    Ab, Bb = discretize(A, B, dt, method=method)
    steps = max(2, int(t_max / dt) + 1)
    x, ys = torch.zeros(2, dtype=A.dtype), []
    for _ in range(steps):  # u_k = 1 for every k: a unit step
        x = Ab @ x + Bb
        ys.append((C @ x + D).item())
        if abs(ys[-1]) > 1e6:
            break
    t_cont = torch.linspace(0, t_max, 400, dtype=A.dtype)
    t_disc = [dt * (k + 1) for k in range(len(ys))]
    plots.draw_discrete_step(axes[0], t_cont, step_response(A, B, C, D, t_cont), t_disc, ys, f"{method}, Δ = {dt:.3g} s")
    axes[0].set_xlim(0, t_max)
    axes[0].set_title(f"{method}: Δ = {dt:.3g} s, ω0Δ = {omega0 * dt:.2g} rad per step")
    plots.draw_unit_circle(axes[1], torch.linalg.eigvals(Ab))
    return axes


def delta_explorer(log10_dt: float = -1.0, method: str = "zoh"):
    """Chapter 2: choose Δ (log scale) and a rule; compare the recurrence with the exact response."""
    return _explorer(discrete_step_figure,
                     _slider(W.FloatSlider, log10_dt, -2.5, 0.3, 0.05, "log10 Δ"),
                     W.Dropdown(options=list(METHODS), value=method, description="rule"))



_HIPPO_TITLES = {"legt": "LegT", "fout": "FouT", "legs": "LegS (LTI)", "legs_scaled": "LegS (scaled, 1/t)", "lagt": "LagT"}


def hippo_reconstruction_figure(N: int, measure: str, ax=None, L: int = 1000, T: float = 1.0):
    """Chapter 4: memorise the chapter's test signal (L samples spread over T time
    units, so Δ = T/L) and draw what the final state remembers of it."""
    from .hippo import hippo_memorize, hippo_reconstruct, hippo_test_signal, sample_ages

    ax = ax or plt.subplots(figsize=(8, 3.4))[1]
    t, u = hippo_test_signal(L, T)
    dt = T / L
    c = hippo_memorize(u, N, measure, dt=dt)[-1]  # (N,) the state at the end
    ages = sample_ages(L, 1.0 / L if measure == "legs_scaled" else dt)  # (L,) oldest first
    weight = {"legs": torch.exp(-ages), "lagt": torch.exp(-ages)}.get(measure, torch.ones(L))
    rec = hippo_reconstruct(c, measure, ages)
    plots.draw_hippo_reconstruction(ax, t, u, rec, f"reconstruction from the final state (N = {N})", weight,
                                    title=f"HiPPO-{_HIPPO_TITLES[measure]}, N = {N}" + ("" if measure == "legs_scaled" else f", Δ = {dt:.3g}"))
    return ax


def hippo_explorer(N: int = 16, measure: str = "legt"):
    """Chapter 4: choose the number of coefficients N and the measure; watch the reconstruction."""
    from .hippo import MEMORY_MEASURES

    return _explorer(hippo_reconstruction_figure,
                     _slider(W.IntSlider, N, 1, 64, 1, "N"),
                     W.Dropdown(options=list(MEMORY_MEASURES), value=measure, description="measure"))


def kernel_figure(rho: float, theta_deg: float, axes=None, L: int = 40):
    """Chapter 3: the kernel and the Toeplitz matrix of a damped rotation.

    Ā = ρ R(θ) (a 2 x 2 rotation by θ scaled by ρ: eigenvalues ρ e^{±iθ}),
    B̄ = (1, 0), C = (1, 0), so K_k = ρ^k cos(kθ). Left: K against the lag;
    right: the L x L lower-triangular Toeplitz matrix y = T u.
    """
    from .convolution import ssm_kernel, toeplitz

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1.5, 1]})
    th = torch.tensor(theta_deg * torch.pi / 180, dtype=torch.float64)
    Ab = rho * torch.stack([torch.stack([th.cos(), -th.sin()]), torch.stack([th.sin(), th.cos()])])  # (2, 2)
    e1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    K = ssm_kernel(Ab, e1, e1, L)  # (L,)
    env = rho ** torch.arange(L, dtype=torch.float64)
    plots.draw_kernel(axes[0], K, f"kernel of Ā = ρR(θ), ρ = {rho:.2f}, θ = {theta_deg:.0f}°", envelope=env)
    plots.draw_toeplitz(axes[1], toeplitz(K), "y = T u: T[t, s] = K[t - s]", colorbar=False)
    return axes


def kernel_explorer(rho: float = 0.9, theta_deg: float = 20.0):
    """Chapter 3: move the eigenvalues ρ e^{±iθ} of Ā; watch the kernel and its Toeplitz matrix."""
    return _explorer(kernel_figure,
                     _slider(W.FloatSlider, rho, 0.5, 1.06, 0.01, "ρ = |λ(Ā)|"),
                     _slider(W.FloatSlider, theta_deg, 0.0, 180.0, 1.0, "θ [deg]"))


def s4_kernel_figure(N: int, log10_dt: float, ax=None, L: int = 256, seed: int = 0):
    """Chapter 5: the S4 kernel of HiPPO-LegS (DPLR form) with N modes and step Δ.

    C ~ CN(0, 1) with a fixed seed; K_l = Re(C Ā^l B̄) through ``s4_kernel``.
    Larger Δ shortens the memory (the kernel decays within fewer steps).
    """
    from .s4 import nplr_legs, s4_kernel

    ax = ax or plt.subplots(figsize=(8, 3.4))[1]
    Lambda, P, B, _ = nplr_legs(N)
    C = torch.randn(N, dtype=torch.complex128, generator=torch.Generator().manual_seed(seed))
    dt = 10.0**log10_dt
    K = s4_kernel(Lambda[None], P[None], B[None], C[None], dt, L)[0]
    ax.plot(torch.arange(L), K, color=plots.PALETTE[0])
    ax.set_xlabel("lag l [steps]")
    ax.set_ylabel("K_l")
    ax.set_title(f"S4 kernel, HiPPO-LegS, N = {N}, Δ = {dt:.3g} (memory ≈ 1/Δ = {1 / dt:.0f} steps)")
    return ax


def s4_kernel_explorer(N: int = 32, log10_dt: float = -2.0):
    """Chapter 5: choose N and Δ (log scale); watch the S4 kernel."""
    return _explorer(s4_kernel_figure,
                     _slider(W.IntSlider, N, 1, 64, 1, "N"),
                     _slider(W.FloatSlider, log10_dt, -3.0, 0.0, 0.1, "log10 Δ"))


def s4d_figure(init: str, N: int, log10_dt: float, axes=None, L: int = 200):
    """Chapter 6: an S4D initialisation's modes and the kernel they make at step Δ.

    One channel, B = C = 1 for every mode (so the kernel shows the modes
    themselves, not a random mixture), ZOH: K_l = 2 Re Σ_n B̄_n Ā_n^l.
    """
    from .diagonal import s4d_init, s4d_kernel

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [1, 1.6]})
    lam = s4d_init(N, init)[None]  # (1, N/2)
    dt = 10.0 ** log10_dt
    K = s4d_kernel(lam, torch.ones_like(lam), torch.ones_like(lam), torch.tensor([dt], dtype=torch.float64), L)[0]
    plots.draw_s4d_init(axes[0], axes[1], lam[0], K, dt, title=f"S4D-{init.capitalize() if init != 'legs' else 'LegS'}, N = {N}")
    return axes


def s4d_explorer(init: str = "legs", N: int = 32, log10_dt: float = -1.0):
    """Chapter 6: choose an S4D initialisation, the state size N and Δ; watch the modes and the kernel."""
    from .diagonal import S4D_INITS

    return _explorer(lambda i, n, d: s4d_figure(i, n, d),
                     W.Dropdown(options=list(S4D_INITS), value=init, description="init"),
                     _slider(W.IntSlider, N, 2, 128, 2, "N (state size)"),
                     _slider(W.FloatSlider, log10_dt, -3.0, 0.0, 0.1, "log10 Δ"))
