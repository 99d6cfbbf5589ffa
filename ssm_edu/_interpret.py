"""Triton's CPU interpreter when Triton was imported before ``ssm_edu``.

Triton decides at decoration time whether a ``@triton.jit`` function is
compiled or interpreted, from ``TRITON_INTERPRET``. ``ssm_edu`` sets that
variable at import when there is no GPU, before its own kernels are
decorated. But Triton's language library (``tl.sum``, ``tl.cdiv``, the
combine functions of ``tl.associative_scan``, the tensor methods built on
them) is itself made of ``@triton.jit`` functions, decorated when Triton is
first imported. If another module imported Triton first (a library, or a
reader's ``import triton`` above ``import ssm_edu``), those are compiled-mode
functions, and an interpreted kernel that calls one fails with Triton's
"Cannot call @triton.jit'd outside of the scope of a kernel".

``interpret_language`` turns those library functions into interpreted ones,
as they would have been had the variable been set first. Only Triton's own
``triton.language`` modules are touched; a reader's own functions decorated
before ``ssm_edu`` was imported stay as they are (``describe_problem`` says
what to do about them).
"""

from __future__ import annotations

import sys

__all__ = ["language_is_compiled", "interpret_language", "check", "HINT"]

FAILED = False  # set when the library could not be turned into interpreted functions: impl="triton" then refuses

HINT = ("Triton was imported before ssm_edu on a machine without a GPU, so functions decorated with @triton.jit "
        "before that are compiled-mode functions that Triton's CPU interpreter cannot call. Import ssm_edu "
        "first, or set TRITON_INTERPRET=1 in the environment before anything imports Triton "
        "(os.environ['TRITON_INTERPRET'] = '1' at the top of the notebook).")


def _jit_classes():
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    return JITFunction, InterpretedFunction


def _language_namespaces():
    """Every namespace of triton.language that can hold library functions: its modules and the tensor class."""
    spaces = [vars(m) for name, m in list(sys.modules.items())
              if m is not None and (name == "triton.language" or name.startswith("triton.language."))]
    core = sys.modules.get("triton.language.core")
    if core is not None and hasattr(core, "tensor"):
        spaces.append(vars(core.tensor))
    return spaces


def language_is_compiled() -> bool:
    """True when Triton is imported and its language library was decorated in compiled mode."""
    if "triton" not in sys.modules:
        return False
    try:
        JITFunction, InterpretedFunction = _jit_classes()
    except ImportError:
        return False
    return any(isinstance(v, JITFunction) and not isinstance(v, InterpretedFunction)
               for space in _language_namespaces() for v in list(space.values()))


def check(op: str) -> None:
    """Raise at once, before any work, when interpreted kernels cannot run in this process."""
    if FAILED:
        raise RuntimeError(f"{op}: impl='triton' cannot run in Triton's CPU interpreter in this process. {HINT}")


def interpret_language() -> int:
    """Interpreted twins of Triton's compiled-mode library functions (see the module docstring).

    Returns how many functions were replaced; if Triton's internals differ from
    what this expects, sets ``FAILED`` instead of raising, so that importing
    ``ssm_edu`` still works and only ``impl="triton"`` refuses, with ``HINT``.
    """
    global FAILED
    try:
        return _interpret_language()
    except Exception:  # noqa: BLE001  (any Triton-internal surprise: refuse clearly later, never break the import)
        FAILED = True
        return 0


def _interpret_language() -> int:
    """Replace Triton's compiled-mode library functions by interpreted ones; returns how many were replaced.

    Each function object is replaced by one interpreted twin everywhere it is
    referenced (``tl.sum`` is the same object in ``triton.language``,
    ``triton.language.standard`` and as the method ``tensor.sum``).
    """
    JITFunction, InterpretedFunction = _jit_classes()
    twins = {}
    core = sys.modules.get("triton.language.core")
    tensor_cls = getattr(core, "tensor", None)
    for name, m in list(sys.modules.items()):
        if m is None or not (name == "triton.language" or name.startswith("triton.language.")):
            continue
        for key, value in list(vars(m).items()):
            if isinstance(value, JITFunction) and not isinstance(value, InterpretedFunction):
                twin = twins.setdefault(id(value), InterpretedFunction(value.fn))
                setattr(m, key, twin)
    if tensor_cls is not None:
        for key, value in list(vars(tensor_cls).items()):
            if isinstance(value, JITFunction) and not isinstance(value, InterpretedFunction):
                setattr(tensor_cls, key, twins.setdefault(id(value), InterpretedFunction(value.fn)))
    return len(twins)
