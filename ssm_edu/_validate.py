"""Input validation shared by every public function of ``ssm_edu``.

Every public function checks its inputs *before any work*, and a bad input
raises an error that names the argument, the expected shape (in the paper's
symbols, with the sizes already known filled in) and the shape received::

    >>> shapes = Shapes("discretize")
    >>> shapes.check("A", torch.zeros(4, 4), "N N")
    >>> shapes.check("B", torch.zeros(3), "N", "N M")
    ValueError: discretize: B must have shape (N,) = (4,) or (N, M) = (4, M); got (3,)

A shape spec is a string of dimension names separated by spaces. A name seen
for the first time binds to the size it meets; later uses must agree. An
integer stands for itself, and a leading ``...`` stands for any batch dims
(bound like a name: every later ``...`` must be the same batch shape).
"""

from __future__ import annotations

import torch

__all__ = ["Shapes", "check_same_device", "check_dtype", "check_positive", "check_length", "as_dt"]


class Shapes:
    """Binds symbolic dimension names to sizes across the arguments of one call."""

    def __init__(self, op: str):
        self.op = op
        self.sizes: dict[str, object] = {}

    def check(self, name: str, x, *specs: str) -> str:
        """Check ``x`` against one of ``specs``; return the spec that matched."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.op}: {name} must be a torch.Tensor, got {type(x).__name__}")
        for spec in specs:
            binding = self._match(spec.split(), tuple(x.shape))
            if binding is not None:
                self.sizes.update(binding)
                return spec
        wanted = " or ".join(self.describe(spec) for spec in specs)
        raise ValueError(f"{self.op}: {name} must have shape {wanted}; got {tuple(x.shape)}")

    def __getitem__(self, dim: str):
        return self.sizes[dim]

    def nonempty(self, *dims: str) -> None:
        """Dimensions that must hold at least one element (a sequence length, say)."""
        for dim in dims:
            if self.sizes[dim] < 1:
                raise ValueError(f"{self.op}: {dim} must be >= 1; got {dim} = {self.sizes[dim]}")

    def describe(self, spec: str) -> str:
        """``"N M"`` -> ``"(N, M) = (4, M)"`` with the sizes known so far."""
        names = spec.split()
        symbolic = _tuple_str(names)
        known = []
        for n in names:
            size = self.sizes.get(n, n)
            known.append(", ".join(map(str, size)) if n == "..." and isinstance(size, tuple) else str(size))
        known = [k for k in known if k != ""]
        concrete = _tuple_str(known)
        return symbolic if concrete == symbolic else f"{symbolic} = {concrete}"

    def _match(self, names: list[str], shape: tuple[int, ...]):
        binding: dict[str, object] = {}
        if names and names[0] == "...":
            rest = names[1:]
            if len(shape) < len(rest):
                return None
            batch, shape = shape[: len(shape) - len(rest)], shape[len(shape) - len(rest):]
            if self.sizes.get("...", batch) != batch:
                return None
            binding["..."] = batch
            names = rest
        if len(names) != len(shape):
            return None
        for n, size in zip(names, shape):
            expected = int(n) if n.isdigit() else binding.get(n, self.sizes.get(n))
            if expected is not None and expected != size:
                return None
            if not n.isdigit():
                binding[n] = size
        return binding


def _tuple_str(items) -> str:
    items = list(items)
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


def check_same_device(op: str, **tensors) -> torch.device | None:
    """All tensor arguments must live on one device; ``None`` values are skipped."""
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device; got {listing}")
    return next(iter(devices.values()), None)


def check_dtype(op: str, name: str, x: torch.Tensor, allowed) -> None:
    if x.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise ValueError(f"{op}: {name} has dtype {str(x.dtype).replace('torch.', '')}; supported: {names}")


def check_length(op: str, L) -> None:
    """A requested sequence length L (a kernel's, say): a Python int >= 1."""
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"{op}: L must be an int >= 1; got {L!r}")


def check_positive(op: str, name: str, x) -> None:
    """Δ and similar time steps: finite and strictly positive."""
    value = x if isinstance(x, torch.Tensor) else torch.tensor(float(x))
    if value.is_complex() or not bool(torch.all(torch.isfinite(value) & (value > 0))):
        raise ValueError(f"{op}: {name} must be real, finite and > 0; got {x if value.numel() <= 4 else 'a tensor with entries that are not'}")


def as_dt(op: str, dt, like: torch.Tensor, batch_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A step Δ (a float or a tensor) as a real tensor on ``like``'s device.

    With ``batch_shape``, a tensor ``dt`` must be 0-dim or have exactly that
    shape; without it the caller checks broadcasting itself.
    """
    if isinstance(dt, torch.Tensor):
        if batch_shape is not None and dt.shape not in ((), batch_shape):
            raise ValueError(
                f"{op}: dt must be a float, a 0-dim tensor or have the batch shape {batch_shape}; got {tuple(dt.shape)}"
            )
        if dt.device != like.device:
            raise ValueError(f"{op}: all tensors must be on one device; got dt on {dt.device}, {like.device} for the rest")
    elif isinstance(dt, bool) or not isinstance(dt, (int, float)):
        raise ValueError(f"{op}: dt must be a float or a tensor; got {dt!r}")
    check_positive(op, "dt", dt)
    real = like.real.dtype if like.is_complex() else like.dtype
    return torch.as_tensor(dt, dtype=real, device=like.device)
