"""impl= dispatch, shape validation, and what importing ssm_edu does."""

import subprocess
import sys

import pytest
import torch

import ssm_edu
from ssm_edu import _dispatch
from ssm_edu._dispatch import dispatch
from ssm_edu._validate import Shapes


def naive(x):
    return "naive"


def vectorized(x):
    return "vectorized"


def test_named_impls_and_auto_on_cpu():
    x = torch.ones(2)
    assert dispatch("op", "naive", (x,), naive=naive, vectorized=vectorized)(x) == "naive"
    # "auto" on CPU tensors is the vectorized version, even when a kernel exists
    assert dispatch("op", "auto", (x,), naive=naive, vectorized=vectorized, triton="nowhere:fn")(x) == "vectorized"


def test_unknown_impl_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"op: unknown impl='cuda'; valid: 'auto', 'naive', 'vectorized', 'triton'"):
        dispatch("op", "cuda", (), naive=naive, vectorized=vectorized, triton="m:f")
    with pytest.raises(ValueError, match="unknown impl=None"):
        dispatch("op", None, (), naive=naive, vectorized=vectorized)


def test_triton_without_triton_installed_raises_importerror(monkeypatch):
    monkeypatch.setattr(_dispatch, "triton_available", lambda: False)
    with pytest.raises(ImportError, match=r"op: impl='triton' needs Triton, which is not installed: pip install triton==3\.7\.1"):
        dispatch("op", "triton", (), naive=naive, vectorized=vectorized, triton="m:f")
    # and "auto" then quietly falls back to the vectorized version
    assert dispatch("op", "auto", (), naive=naive, vectorized=vectorized, triton="m:f") is vectorized


def test_triton_target_is_imported_lazily_from_ssm_edu_kernels(monkeypatch):
    import types

    fake = types.ModuleType("ssm_edu.kernels._fake")
    fake.fn = lambda: "kernel"
    monkeypatch.setitem(sys.modules, "ssm_edu.kernels._fake", fake)
    monkeypatch.setattr(_dispatch, "triton_available", lambda: True)
    assert dispatch("op", "triton", (), naive=naive, vectorized=vectorized, triton="_fake:fn")() == "kernel"


def test_shapes_bind_names_and_explain_mismatches():
    s = Shapes("op")
    s.check("u", torch.zeros(2, 3, 7), "b d L")
    assert (s["b"], s["d"], s["L"]) == (2, 3, 7)
    with pytest.raises(ValueError, match=r"op: delta must have shape \(b, d, L\) = \(2, 3, 7\); got \(2, 3, 8\)"):
        s.check("delta", torch.zeros(2, 3, 8), "b d L")
    with pytest.raises(ValueError, match=r"op: A must have shape \(d, n\) = \(3, n\); got \(4, 16\)"):
        s.check("A", torch.zeros(4, 16), "d n")
    with pytest.raises(ValueError, match=r"op: B must have shape \(b, n, L\) = \(2, 16, 7\) or \(b, g, n, L\) = \(2, g, 16, 7\); got \(2, 16\)"):
        s.check("A", torch.zeros(3, 16), "d n")
        s.check("B", torch.zeros(2, 16), "b n L", "b g n L")
    with pytest.raises(TypeError, match="op: x must be a torch.Tensor, got list"):
        s.check("x", [1, 2], "n")
    s.check("k", torch.zeros(4), "4")
    with pytest.raises(ValueError, match=r"\(4,\); got \(5,\)"):
        s.check("k", torch.zeros(5), "4")


def _python(code: str, **env):
    import os

    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=full)


def test_import_is_silent_and_sets_the_triton_interpreter_without_a_gpu():
    out = _python("import os, ssm_edu; print(os.environ.get('TRITON_INTERPRET'))", TRITON_INTERPRET="")
    assert out.returncode == 0, out.stderr
    # setdefault: an explicit (even empty) setting of the reader's is kept
    assert out.stdout.strip() == "", out.stdout
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", "import os, ssm_edu; print(os.environ.get('TRITON_INTERPRET'))"], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout == ("None\n" if torch.cuda.is_available() else "1\n")
    assert out.stderr == ""


def test_public_api_names_are_importable():
    for name in ["discretize", "discretize_diag", "check", "for_device", "rel_error", "impulse_response"]:
        assert hasattr(ssm_edu, name)


def test_compiled_triton_refuses_cpu_tensors(monkeypatch):
    """On a machine with a GPU (interpreter off) impl="triton" says the inputs must be CUDA tensors, before any work.

    Simulated here: CUDA reported present and TRITON_INTERPRET unset; the error comes before a kernel is launched.
    """
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    a, b = torch.rand(2, 5), torch.rand(2, 5)
    with pytest.raises(ValueError, match=r"linear_scan: impl='triton' runs compiled .* needs CUDA tensors; got a tensor on cpu"):
        ssm_edu.linear_scan(a, b, impl="triton")


def test_a_wrong_shape_is_named_before_the_device(monkeypatch):
    """The device check of compiled Triton runs when the kernel is called, after the operation's shape checks:
    ssd dispatches first, and a wrong shape on CPU tensors is still reported as a wrong shape."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, dt, A = torch.rand(1, 8, 2, 4), torch.rand(1, 8, 2), -torch.rand(2)
    B = torch.rand(1, 8, 1, 3)
    with pytest.raises(ValueError, match=r"ssd: C"):
        ssm_edu.ssd(x, dt, A, B, torch.rand(1, 7, 1, 3), impl="triton")
    with pytest.raises(ValueError, match=r"ssd: impl='triton' runs compiled .* needs CUDA tensors"):
        ssm_edu.ssd(x, dt, A, B, B, impl="triton")
