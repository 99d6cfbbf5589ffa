"""The shared tier-equivalence harness (DESIGN.md: the naive version is the specification).

``assert_tiers_agree`` runs every implementation of an operation on the same
random inputs and checks, with the tolerances of API.md:

1. in float64, every implementation equals the naive one (to 1e-10): the
   algorithms compute the same function;
2. in each lower precision, every implementation (naive included) is within
   the dtype's tolerance of the naive version evaluated in float64 on the
   same (rounded) inputs: the implementation is accurate, not just
   self-consistent;
3. the outputs have the expected dtype and shape.

``make_inputs(dtype, gen)`` returns ``(args, kwargs)``; tensors among ``args``
and ``kwargs`` are cast to each dtype under test (complex tensors to the
matching complex dtype).
"""

from __future__ import annotations

import torch

from ssm_edu.numerics import rel_error, tolerance

_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def cast(x, dtype):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() and not x.is_complex():
        return x
    if x.is_complex():
        return x.to(_COMPLEX.get(dtype, torch.complex64))
    return x.to(dtype)


def _cast_all(args, kwargs, dtype):
    return tuple(cast(a, dtype) for a in args), {k: cast(v, dtype) for k, v in kwargs.items()}


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def assert_tiers_agree(op, make_inputs, impls, dtypes=(torch.float32,), gen=None, skip_naive_low=False, label=""):
    """Check every impl in ``impls`` against ``impl="naive"`` (see module docstring).

    ``skip_naive_low``: the naive version of some operations is literal and
    loses digits in low precision by design (chapter 2's ZOH formula); set it
    to check only the fast tiers in ``dtypes``.
    """
    gen = gen or torch.Generator().manual_seed(0)
    args, kwargs = make_inputs(torch.float64, gen)
    ref = _as_tuple(op(*args, **kwargs, impl="naive"))
    for impl in impls:
        out = _as_tuple(op(*args, **kwargs, impl=impl))
        for k, (o, r) in enumerate(zip(out, ref)):
            assert o.shape == r.shape, f"{label} {impl} output {k}: shape {tuple(o.shape)} != naive {tuple(r.shape)}"
            err = rel_error(o, r)
            assert err < 1e-10, f"{label} {impl} float64 output {k}: rel error {err:.3g} vs naive"
    for dtype in dtypes:
        low_args, low_kwargs = _cast_all(args, kwargs, dtype)
        up_args, up_kwargs = _cast_all(low_args, low_kwargs, torch.float64)
        ref = _as_tuple(op(*up_args, **up_kwargs, impl="naive"))
        for impl in ([] if skip_naive_low else ["naive"]) + [i for i in impls if i != "naive"]:
            out = _as_tuple(op(*low_args, **low_kwargs, impl=impl))
            for k, (o, r) in enumerate(zip(out, ref)):
                expected = _COMPLEX.get(dtype, dtype) if r.is_complex() else dtype
                assert o.dtype == expected, f"{label} {impl} {dtype} output {k}: dtype {o.dtype}, expected {expected}"
                err = rel_error(o, r)
                assert err < tolerance(dtype), f"{label} {impl} {dtype} output {k}: rel error {err:.3g} >= {tolerance(dtype)}"
