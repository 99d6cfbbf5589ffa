"""The selective scan's Triton backward pass (chapter 7): every knob of the backward kernel and every forward
variant that saves its checkpoints, at sizes that are multiples of no block, against the float64 loop; on a GPU
also long sequences, bfloat16 against float32, and the checkpoints' spacing. Interpreter on CPU, compiled on a
GPU: the same file."""

import pytest
import torch

import ssm_edu
from ssm_edu import selective_scan
from ssm_edu.numerics import rel_error, tolerance

DEVICE = ssm_edu.default_device()
ON_GPU = DEVICE.type == "cuda"
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def inputs(batch, D, L, N, G=None, seed=0, dtype=torch.float64, options=True):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    BC = (batch, N, L) if G is None else (batch, G, N, L)
    t = dict(u=r(batch, D, L), delta=0.5 * r(batch, D, L), A=-(0.5 + torch.rand(D, N, generator=gen, dtype=torch.float64)),
             B=r(*BC), C=r(*BC))
    if options:
        t.update(D=r(D), z=r(batch, D, L), delta_bias=0.3 * r(D))
    else:
        t["delta"] = t["delta"].abs()
    return {k: v.to(dtype) for k, v in t.items()}


def loss_weights(y, h, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(y.shape, generator=gen, dtype=torch.float64), torch.randn(h.shape, generator=gen, dtype=torch.float64))


def reference_grads(args, softplus=True, impl="naive", device="cpu"):
    """Gradients of <wy, y> + <wh, last_state> by autograd through the float64 loop (or, ``impl="vectorized"``,
    all steps at once and a log-depth scan over t, whose float64 gradients equal the loop's: test_selective.py's
    test_fast_gradients_match_naive, to 1e-12 with groups and every option), returned on the CPU."""
    leaves = {k: v.detach().to(device, torch.float64).requires_grad_() for k, v in args.items()}
    y, h = selective_scan(**leaves, delta_softplus=softplus, return_last_state=True, impl=impl)
    wy, wh = loss_weights(y, h)
    ((y * wy.to(device)).sum() + (h * wh.to(device)).sum()).backward()
    return {k: v.grad.cpu() for k, v in leaves.items()}


def kernel_grads(args, softplus=True, fwd=None, **bwd):
    """The same through the kernel's launchers: a forward variant (``fwd``: selective_scan_fwd's knobs) that saves
    its checkpoints, then the backward kernel with its knobs."""
    from ssm_edu.kernels.selective import selective_scan_bwd, selective_scan_fwd

    dev = {k: v.to(DEVICE) for k, v in args.items()}
    names = ("D", "z", "delta_bias")
    kw = {k: dev.get(k) for k in names}
    y, h, ck, meta = selective_scan_fwd(dev["u"], dev["delta"], dev["A"], dev["B"], dev["C"], **kw,
                                        delta_softplus=softplus, save_checkpoints=True, **(fwd or {}))
    wy, wh = loss_weights(y, h)
    grads = selective_scan_bwd(wy.to(DEVICE, y.dtype), wh.to(DEVICE), ck, meta, dev["u"], dev["delta"], dev["A"],
                               dev["B"], dev["C"], **kw, delta_softplus=softplus, **bwd)
    return dict(zip(NAMES, grads))


def assert_close(got, ref, tol, label=""):
    for name, r in ref.items():
        g = got[name]
        assert g is not None and g.shape == r.shape, f"{label} d{name}: shape {None if g is None else g.shape}"
        err = rel_error(g.double().cpu(), r)
        assert err < tol, f"{label} d{name}: relative error {err:.2e}"


# D = 6 in G = 2 groups: 3 channels per group, a multiple of no channel block; L = 13: of no block of steps
# (8 in the interpreter); N = 5: modes past N are masked
ODD = (1, 6, 13, 5, 2)
FORWARDS = [dict(variant="nsplit"), dict(variant="nsplit", tn=4, block_l=4), dict(variant="rows"),
            dict(variant="nloop", block_l=8), dict(variant="nsplit", segments=3, block_l=2),
            dict(variant="nsplit", share=2, softplus_poly=True)]  # the candidate default's knobs
BACKWARDS = [dict(), dict(tn=1), dict(tn=2, share=0), dict(tn=8, share=1), dict(tn=4, block_d=2),
             dict(tn=8, num_warps=2), dict(tn=4, num_warps=1)]  # the last two: candidates to time (notes)


@pytest.mark.parametrize("fwd", FORWARDS, ids=str)
def test_backward_after_every_forward_variant(fwd):
    args = inputs(*ODD, dtype=torch.float32)
    ref = reference_grads(args)
    assert_close(kernel_grads(args, fwd=fwd), ref, tolerance(torch.float32), str(fwd))


@pytest.mark.parametrize("bwd", BACKWARDS, ids=str)
def test_backward_knobs(bwd):
    args = inputs(2, *ODD[1:], dtype=torch.float32, seed=1) if not bwd else inputs(*ODD, dtype=torch.float32, seed=1)
    ref = reference_grads(args)
    assert_close(kernel_grads(args, **bwd), ref, tolerance(torch.float32), str(bwd))


@pytest.mark.parametrize("case", [(1, 1, 1, 1, None), (1, 3, 8, 16, None), (3, 4, 5, 2, 4)], ids=str)
def test_backward_small_cases(case):
    """L = 1 (one partial block), one full block with N = 16, batch 3 with a group per channel."""
    args = inputs(*case, dtype=torch.float32, seed=2)
    ref = reference_grads(args)
    assert_close(kernel_grads(args), ref, tolerance(torch.float32), str(case))


def test_backward_without_options():
    args = inputs(2, 4, 11, 3, options=False, dtype=torch.float32, seed=3)
    ref = reference_grads(args, softplus=False)
    assert_close(kernel_grads(args, softplus=False), ref, tolerance(torch.float32))


def test_autograd_only_the_inputs_that_need_it():
    """Through selective_scan: a loss of y alone, gradients only where asked (the others stay None)."""
    args = inputs(1, 3, 10, 4, G=None, dtype=torch.float32, seed=4)
    dev = {k: v.to(DEVICE) for k, v in args.items()}
    dev["u"].requires_grad_()
    dev["A"].requires_grad_()
    y = selective_scan(**dev, delta_softplus=True, impl="triton")
    y.square().sum().backward()
    leaves = {k: v.detach().double().requires_grad_(k in ("u", "A")) for k, v in args.items()}
    selective_scan(**leaves, delta_softplus=True, impl="naive").square().sum().backward()
    for k in ("u", "A"):
        assert rel_error(dev[k].grad.double().cpu(), leaves[k].grad) < tolerance(torch.float32), k
    assert dev["B"].grad is None and dev["delta"].grad is None


@pytest.mark.heavy
@pytest.mark.skipif(not ON_GPU, reason="long sequences and bfloat16 arithmetic need a GPU")
@pytest.mark.parametrize("case", [(2, 64, 1000, 16, None), (1, 96, 2053, 16, 3), (1, 40, 300, 64, 2)], ids=str)
@pytest.mark.parametrize("bwd", [dict(), dict(tn=8, num_warps=1)], ids=str)
def test_backward_long_sequences(case, bwd):
    """The float64 reference by the vectorized scan on the GPU: the loop took 17 s of a free core with groups
    at L = 2053 (its grouped backward), the vectorized scan 0.3 s on the CPU."""
    args = inputs(*case, dtype=torch.float32, seed=6)
    ref = reference_grads(args, impl="vectorized", device=DEVICE)
    assert_close(kernel_grads(args, **bwd), ref, tolerance(torch.float32), f"{case} {bwd}")


@pytest.mark.heavy
@pytest.mark.skipif(not ON_GPU, reason="bfloat16 arithmetic needs a GPU (the interpreter computes in float32)")
@pytest.mark.parametrize("bwd", [dict(), dict(tn=4, num_warps=1), dict(tn=8, num_warps=1), dict(tn=8, num_warps=2),
                                 dict(tn=2, num_warps=4)], ids=str)
def test_backward_bf16_matches_float32(bwd):
    """bf16 inputs: gradients against the kernel's own float32 result on the same (rounded) inputs."""
    args = inputs(2, 256, 1024, 16, G=None, dtype=torch.bfloat16, seed=7)
    args32 = {k: v.float() for k, v in args.items()}
    ref = {k: v.double().cpu() for k, v in kernel_grads(args32, **bwd).items()}
    got = kernel_grads({k: (v if k not in ("A", "D", "delta_bias") else v.float()) for k, v in args.items()}, **bwd)
    assert got["u"].dtype == torch.bfloat16 and got["delta"].dtype == torch.bfloat16
    assert_close(got, ref, tolerance(torch.bfloat16), f"bf16 {bwd}")


def test_the_last_states_gradient_reaches_the_kernel_only_when_used(monkeypatch):
    """Through autograd, a last state the loss does not read gives the backward kernel no gradient (None, not
    zeros): with one, the kernel's loop compiles to more than twice the instructions (the loaded adjoint's
    layout), 2.4 times the time on an H100. The gradients agree with the float64 loop either way."""
    from ssm_edu.kernels import selective as kernel

    seen = []
    real = kernel.selective_scan_bwd

    def spy(gy, glast, *args, **kwargs):
        seen.append(glast)
        return real(gy, glast, *args, **kwargs)

    monkeypatch.setattr(kernel, "selective_scan_bwd", spy)
    args = inputs(1, 3, 11, 4, seed=7)
    for use_last in (False, True):
        leaves = {k: v.float().to(DEVICE).requires_grad_() for k, v in args.items()}
        y, h = selective_scan(**leaves, delta_softplus=True, return_last_state=True, impl="triton")
        loss = y.sum() + (h.sum() if use_last else 0)
        loss.backward()
        ref = {k: v.detach().requires_grad_() for k, v in args.items()}
        yr, hr = selective_scan(**ref, delta_softplus=True, return_last_state=True, impl="naive")
        (yr.sum() + (hr.sum() if use_last else 0)).backward()
        for name in NAMES:
            err = rel_error(leaves[name].grad.double().cpu(), ref[name].grad)
            assert err < tolerance(torch.float32), f"d{name} (last state used: {use_last}): {err:.2e}"
    assert seen[0] is None and seen[1] is not None
