"""Automatically checked exercises.

A learner writes a function in a notebook cell (or a script) and runs::

    from ssm_edu.exercises import check
    check("ch02.zoh", my_zoh)

``check`` calls the function on fresh random cases, edge cases included
(length 1, odd sizes, extreme steps), compares each result with the book's
reference implementation in float64, and prints either a pass or the first
case that failed, by how much, and a hint. It never prints the reference's
code. ``exercises()`` lists the names and the signature each one expects.

Each chapter's exercises (cases, reference, hint) live in
``ssm_edu/exercises/chNN.py`` and register themselves on import.

The random cases change from call to call; the report prints the seed, and
``check(name, fn, seed=...)`` replays the same cases.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch

from ..numerics import rel_error

__all__ = ["check", "exercises", "register", "Exercise", "CheckResult"]


@dataclass(frozen=True)
class Exercise:
    """One checked exercise: the signature the learner implements, the hidden
    reference, a generator of (label, args) cases in float64, and a hint."""

    name: str
    signature: str
    task: str
    reference: Callable
    cases: Callable[[torch.Generator], list]
    hint: str
    # Loose enough for a correct answer computed in float32 (or with a float32 Δ),
    # far below what any wrong formula gives (typically 1e-3 or more).
    tol: float = 1e-6
    outputs: tuple[str, ...] = ()  # names of the results, for the report


@dataclass
class CheckResult:
    """What ``check`` found. Truthy when every case passed."""

    name: str
    passed: bool
    report: str
    seed: int

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"CheckResult({self.name!r}, passed={self.passed})"


_REGISTRY: dict[str, Exercise] = {}


def register(ex: Exercise) -> None:
    """Add an exercise (each chapter's cases live in ``ssm_edu/exercises/chNN.py``)."""
    if ex.name in _REGISTRY:
        raise ValueError(f"exercise {ex.name!r} is registered twice")
    _REGISTRY[ex.name] = ex


def exercises() -> list[str]:
    """Names of the checked exercises, each with the signature it expects."""
    return [f"{ex.name}: {ex.signature}  -- {ex.task}" for ex in _REGISTRY.values()]


def check(name: str, fn: Callable, *, seed: int | None = None, quiet: bool = False) -> CheckResult:
    """Check ``fn`` against the reference for exercise ``name``; print and return the verdict."""
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"check: unknown exercise {name!r}; known: {known}")
    if not callable(fn):
        raise TypeError(f"check: the second argument must be your function, got {type(fn).__name__}")
    ex = _REGISTRY[name]
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    gen = torch.Generator().manual_seed(seed)
    cases = ex.cases(gen)
    for i, (label, args) in enumerate(cases, 1):
        problem = _run_case(ex, fn, args)
        if problem:
            report = (
                f"✗ {name}: case {i} of {len(cases)} failed ({label}).\n"
                f"  {problem}\n"
                f"  Hint: {ex.hint}\n"
                f"  (replay these cases with check({name!r}, fn, seed={seed}))"
            )
            return _finish(CheckResult(name, False, report, seed), quiet)
    report = f"✓ {name}: passed all {len(cases)} cases (seed {seed})."
    return _finish(CheckResult(name, True, report, seed), quiet)


def _finish(result: CheckResult, quiet: bool) -> CheckResult:
    if not quiet:
        print(result.report)
    return result


def _clone(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _run_case(ex: Exercise, fn: Callable, args) -> str | None:
    """None when the learner's output matches, else a one-line description of the problem."""
    expected = ex.reference(*_clone(args))
    try:
        got = fn(*_clone(args))
    except Exception as err:  # the learner's code raised: report it, do not crash the notebook
        return f"your function raised {type(err).__name__}: {err}"
    many = isinstance(expected, tuple)
    if many and (not isinstance(got, (tuple, list)) or len(got) != len(expected)):
        return f"expected a tuple of {len(expected)} results, got {type(got).__name__}"
    names = list(ex.outputs) or ([f"result {k}" for k in range(len(expected))] if many else ["result"])
    for label, e, g in zip(names, expected if many else (expected,), got if many else (got,)):
        problem = _compare(label, e, g, ex.tol)
        if problem:
            return problem
    return None


def _compare(label: str, expected, got, tol: float) -> str | None:
    if isinstance(expected, bool):
        if bool(got) != expected:
            return f"{label}: expected {expected}, got {bool(got)}"
        return None
    try:
        got = torch.as_tensor(got)
    except Exception:
        return f"{label}: expected a tensor of shape {tuple(expected.shape)}, got {type(got).__name__}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"{label}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    if not bool(torch.all(torch.isfinite(got))):
        return f"{label}: contains NaN or infinity"
    err = rel_error(got, expected)
    if not err < tol:
        return f"{label}: relative error {err:.3g} (allowed {tol:.0e})"
    return None



# Each chapter module registers its exercises when imported.
from . import ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10, ch11, primer  # noqa: E402,F401
