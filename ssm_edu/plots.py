"""The book's plotting defaults and the figures shared by chapters and explorers.

``use_style()`` gives every figure the same look: a colour-blind-safe palette
(Okabe-Ito), light grids, no top/right spines. Axis labels carry units;
``time_plot`` names the device that produced a measurement. The ``draw_*``
functions draw one panel each; a chapter's static figure and its interactive
explorer (``ssm_edu.widgets``) call the same function, so they always agree.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from .device import device_name

__all__ = [
    "use_style", "PALETTE", "IMPL_COLORS", "time_plot",
    "draw_modes",  # chapter 1
    "draw_discrete_step", "draw_unit_circle",  # chapter 2
    "draw_kernel", "draw_toeplitz",  # chapter 3
    "draw_hippo_reconstruction",  # chapter 4
    "draw_s4d_init",  # chapter 6
]

#: Okabe-Ito colours, safe for the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

#: One colour per implementation, the same in every chapter.
IMPL_COLORS = {"naive": "#D55E00", "vectorized": "#0072B2", "triton": "#009E73", "reference": "#000000"}


def use_style() -> None:
    """Apply the book's matplotlib style (call once in a chapter's set-up cell)."""
    plt.rcParams.update({
        "figure.figsize": (7.0, 3.4),
        "figure.dpi": 110,
        "savefig.bbox": "tight",
        "axes.prop_cycle": plt.cycler(color=PALETTE),
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "legend.fontsize": 9,
        "legend.frameon": False,
        "lines.linewidth": 1.8,
    })


def time_plot(sizes, times: dict[str, list[float]], xlabel: str, title: str = "", ax=None, device=None):
    """Log-log plot of run time (milliseconds) against size, one line per implementation."""
    ax = ax or plt.subplots()[1]
    for name, ts in times.items():
        ax.loglog(sizes, [1e3 * t for t in ts], "o-", label=name, color=IMPL_COLORS.get(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("time per call [ms]")
    where = device_name(device)
    ax.set_title(f"{title} ({where})" if title else where)
    ax.legend()
    return ax


def draw_modes(ax_plane, ax_time, re: float, im: float, t_max: float = 10.0):
    """A conjugate pair of eigenvalues re ± i·im (left) and the mode e^{re t} cos(im t) (right).

    The right panel is the impulse response of the 2-state system
    A = [[re, im], [-im, re]], B = C = (1, 0). Its title states the memory
    τ_mem = 1/|re| (dotted line at t = τ_mem), or that the mode never decays
    (re = 0) or grows without bound (re > 0).
    """
    ax_plane.clear()
    ax_plane.axvspan(-10, 0, color=PALETTE[2], alpha=0.08, label="stable half-plane")
    ax_plane.axhline(0, color="0.5", lw=0.8)
    ax_plane.axvline(0, color="0.5", lw=0.8)
    ax_plane.plot([re, re], [im, -im], "x", ms=10, mew=2.5, color=PALETTE[3])
    ax_plane.set_xlim(-2.2, 0.7)
    ax_plane.set_ylim(-6.5, 6.5)
    ax_plane.set_xlabel("Re λ [1/s]")
    ax_plane.set_ylabel("Im λ [rad/s]")
    ax_plane.set_title("eigenvalues of A")
    ax_plane.legend(loc="upper left")

    t = np.linspace(0.0, t_max, 600)
    ax_time.clear()
    ax_time.plot(t, np.exp(re * t) * np.cos(im * t), color=PALETTE[0], label=r"$h(t) = e^{\mathrm{Re}\,\lambda\, t}\cos(\mathrm{Im}\,\lambda\, t)$")
    if re != 0:
        ax_time.plot(t, np.exp(re * t), "--", color="0.5", lw=1, label=r"envelope $e^{\mathrm{Re}\,\lambda\, t}$")
    if re < 0 and 1 / abs(re) <= t_max:
        ax_time.axvline(1 / abs(re), ls=":", color="0.3", lw=1.2, label=r"$t = \tau_{\mathrm{mem}}$")
    ax_time.set_ylim(-2.5, 2.5)
    ax_time.set_xlabel("time t [s]")
    ax_time.set_ylabel("h(t)")
    if re < 0:
        memory = rf"memory $\tau_{{\mathrm{{mem}}}}$ = 1/|Re λ| = {1 / abs(re):.2g} s"
    elif re == 0:
        memory = "no decay: memory forever"
    else:
        memory = rf"grows like $e^{{{re:.2g}\,t}}$: unstable"
    ax_time.set_title(f"impulse response; {memory}")
    ax_time.legend(loc="upper right", frameon=True, framealpha=0.9, edgecolor="none")


def draw_unit_circle(ax, eigenvalues, title: str = "eigenvalues of Ā"):
    """Discrete eigenvalues against the unit circle (|z| < 1 is stable)."""
    ax.clear()
    theta = np.linspace(0, 2 * math.pi, 300)
    ax.fill(np.cos(theta), np.sin(theta), color=PALETTE[2], alpha=0.08)
    ax.plot(np.cos(theta), np.sin(theta), color="0.5", lw=1)
    ev = torch.as_tensor(eigenvalues).to(torch.complex128).numpy()
    ax.plot(ev.real, ev.imag, "x", ms=10, mew=2.5, color=PALETTE[3])
    lim = max(1.3, float(np.abs(ev).max()) * 1.1)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("Re z")
    ax.set_ylabel("Im z")
    ax.set_title(title)


def draw_discrete_step(ax, t_cont, y_cont, t_disc, y_disc, label: str):
    """Continuous step response (line) against the discrete recurrence's samples (dots)."""
    t_cont, y_cont = np.asarray(t_cont), np.asarray(y_cont)
    t_disc, y_disc = np.asarray(t_disc), np.asarray(y_disc)
    ax.clear()
    ax.plot(t_cont, y_cont, color="0.3", label="continuous system (exact)")
    ax.plot(t_disc, y_disc, "o", ms=3.5, color=PALETTE[3], label=label)
    finite = y_disc[np.isfinite(y_disc)]
    top = max(2.0, float(np.max(np.abs(y_cont))) * 1.6)
    if finite.size and float(np.max(np.abs(finite))) > top:
        ax.set_ylim(-top, top)
        ax.text(0.5, 0.92, "the recurrence blows up", transform=ax.transAxes, ha="center", color=PALETTE[3])
    ax.set_xlabel("time t [s]")
    ax.set_ylabel("output y(t)")
    ax.legend(loc="lower right")




def draw_hippo_reconstruction(ax, t, u, rec, label: str, weight=None, title: str = ""):
    """Chapter 4: a signal (grey), what a HiPPO state remembers of it (colour), and the
    measure ω, the weight each moment of the past gets (shaded, rescaled to the plot)."""
    t, u, rec = (np.asarray(torch.as_tensor(x).detach().cpu()) for x in (t, u, rec))
    ax.clear()
    lo, hi = min(u.min(), -0.9), max(u.max(), 0.9)
    if weight is not None:
        w = np.asarray(torch.as_tensor(weight).detach().cpu())
        base = lo - 0.25 * (hi - lo)
        ax.fill_between(t, base, base + 0.2 * (hi - lo) * w / max(w.max(), 1e-300), color=PALETTE[2], alpha=0.25,
                        label="measure ω (weight of the past)")
        lo = base
    ax.plot(t, u, color="0.55", lw=2.6, label="input f(t)")
    ax.plot(t, rec, color=PALETTE[3], lw=1.4, label=label)
    ax.set_ylim(lo - 0.05, hi + 0.35 * (hi - lo))
    ax.set_xlabel("time t [time units]")
    ax.set_ylabel("signal value")
    rmse = float(np.sqrt(np.mean((rec - u) ** 2)))
    ax.set_title(f"{title}  (RMSE {rmse:.3g})" if title else f"RMSE {rmse:.3g}")
    ax.legend(loc="upper left", ncol=3, fontsize=8)




def draw_kernel(ax, K, title: str = "", envelope=None):
    """A convolution kernel K_k against the lag k (stems), with an optional envelope such as ρ^k."""
    K = torch.as_tensor(K).detach().to("cpu", torch.float64).numpy()
    k = np.arange(len(K))
    ax.clear()
    ax.axhline(0, color="0.5", lw=0.8)
    ax.vlines(k, 0, K, color=PALETTE[0], lw=1.2)
    ax.plot(k, K, "o", ms=3, color=PALETTE[0], label=r"$K_k = C \bar A^k \bar B$")
    if envelope is not None:
        env = np.asarray(envelope, dtype=float)
        ax.plot(k, env, "--", color="0.4", lw=1, label=r"$\pm\rho^k$ ($\rho$ = spectral radius of $\bar A$)")
        ax.plot(k, -env, "--", color="0.4", lw=1)
    ax.set_xlabel("lag k [steps]")
    ax.set_ylabel("kernel value K_k")
    ax.set_title(title or "convolution kernel")
    ax.legend(loc="upper right", fontsize=8)


def draw_toeplitz(ax, T, title: str = "", colorbar: bool = True):
    """Heat map of an input-output matrix T[t, s] (output position t down, input position s across).

    A diverging colour map centred on 0: white is zero (the causal upper triangle).
    """
    T = torch.as_tensor(T).detach().to("cpu", torch.float64).numpy()
    vmax = float(np.abs(T).max()) or 1.0
    ax.clear()
    im = ax.imshow(T, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax.set_xlabel("input position s [step]")
    ax.set_ylabel("output position t [step]")
    ax.set_title(title or "input-output matrix T[t, s]")
    ax.grid(False)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="weight of u_s in y_t")
    return im


def draw_s4d_init(ax_eig, ax_kernel, Lambda, K, dt: float, title: str = ""):
    """Chapter 6: the stored modes Λ of a diagonal SSM (left, the complex plane) and its kernel (right).

    Lambda (N,) complex (conjugates are implied and drawn hollow); K (L,) real.
    """
    lam = torch.as_tensor(Lambda).detach().cpu()
    ax_eig.scatter(lam.real, lam.imag, s=14, color=PALETTE[0], label="stored Λ_n")
    ax_eig.scatter(lam.real, -lam.imag, s=14, facecolors="none", edgecolors=PALETTE[0], label="conjugates")
    ax_eig.set_xlabel("Re Λ")
    ax_eig.set_ylabel("Im Λ [rad per unit time]")
    ax_eig.set_title(f"{title}: modes" if title else "modes")
    ax_eig.legend(loc="best")
    K = torch.as_tensor(K).detach().cpu()
    ax_kernel.plot(K, color=PALETTE[1])
    ax_kernel.set_xlabel("lag l [steps]")
    ax_kernel.set_ylabel("K_l")
    ax_kernel.set_title(f"kernel, Δ = {dt:.3g}")
    return ax_eig, ax_kernel
