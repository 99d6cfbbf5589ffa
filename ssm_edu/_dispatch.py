"""The ``impl=`` keyword shared by every operation (API.md, "Conventions").

``dispatch`` turns ``impl`` into one of the operation's implementations:

* ``"naive"``, ``"vectorized"`` and operation-specific forms (``"quadratic"``
  for ``ssd``) are plain functions of ``ssm_edu``;
* ``"triton"`` is given as ``"module:function"`` inside ``ssm_edu.kernels`` and
  imported only when asked for, so that ``ssm_edu`` imports without Triton;
* ``"auto"`` picks ``"triton"`` for CUDA tensors when Triton is installed and
  the operation has a kernel, else ``"vectorized"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Callable

import torch

__all__ = ["dispatch", "float32_kernel", "triton_available", "TRITON_INSTALL_HINT"]

TRITON_INSTALL_HINT = (
    "pip install triton==3.7.1 (Linux x86-64; the book's requirements.txt installs it). "
    "On a machine without a GPU, Triton runs the kernel in its CPU interpreter."
)


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def dispatch(op: str, impl: str, tensors, **impls: Callable | str | None) -> Callable:
    """Return the function that implements ``op`` for ``impl``.

    ``tensors`` are the call's tensor arguments (``None`` allowed), used by
    ``"auto"`` to see whether the work is on a GPU. ``impls`` maps each
    implementation name to a function, or for ``"triton"`` to a
    ``"module:function"`` string inside ``ssm_edu.kernels``.
    """
    impls = {name: f for name, f in impls.items() if f is not None}
    if not isinstance(impl, str) or (impl != "auto" and impl not in impls):
        valid = ", ".join(repr(n) for n in ["auto", *impls])
        raise ValueError(f"{op}: unknown impl={impl!r}; valid: {valid}")
    if impl == "auto":
        on_cuda = any(isinstance(t, torch.Tensor) and t.is_cuda for t in tensors)
        impl = "triton" if ("triton" in impls and on_cuda and triton_available()) else "vectorized"
    target = impls[impl]
    if impl == "triton":
        if not triton_available():
            raise ImportError(f"{op}: impl='triton' needs Triton, which is not installed: {TRITON_INSTALL_HINT}")
        from . import _interpret

        _interpret.check(op)
        target = _on_device(op, tensors, target)
    return target


def _on_device(op: str, tensors, target: str) -> Callable:
    """The kernel ``"module:function"`` of ``ssm_edu.kernels``, imported and checked when it is called.

    An operation dispatches first and checks its arguments' shapes after: the device check of compiled Triton
    (``_check_compiled_device``) waits for the call, so that a wrong shape is reported as such and not as a
    tensor on the wrong device. The import waits too: a kernel module decides at import whether Triton runs
    compiled or interpreted.
    """
    module, _, name = target.partition(":")

    def kernel(*args, **kwargs):
        _check_compiled_device(op, tensors)
        return getattr(importlib.import_module(f"ssm_edu.kernels.{module}"), name)(*args, **kwargs)

    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = f"ssm_edu.kernels.{module}.{name}, imported when called."
    return kernel


def _check_compiled_device(op: str, tensors) -> None:
    """Compiled Triton kernels (a machine with a GPU, interpreter off) read CUDA memory only: say so before any work."""
    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        return
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "cuda":
            raise ValueError(f"{op}: impl='triton' runs compiled on this machine's GPU and needs CUDA tensors; got a "
                             f"tensor on {t.device} (move the inputs with .cuda(), or use impl='vectorized' there)")


def float32_kernel(op: str, impl: str, fn: Callable, *, double: bool, what: str, fallback: Callable) -> Callable:
    """The function to run, given that the Triton kernels compute in float32.

    For float64 work (``double``) ``"auto"`` takes ``fallback`` (the vectorized
    form, which keeps the reference precision) and an explicit ``"triton"``
    is an error that names what was float64 (``what``, e.g. ``"float64 x"``).
    Otherwise ``fn``, as ``dispatch`` chose it.
    """
    if double and impl == "auto":
        return fallback
    if double and impl == "triton":
        raise ValueError(f"{op}: impl='triton' computes in float32; got {what} (use impl='vectorized' for float64)")
    return fn
