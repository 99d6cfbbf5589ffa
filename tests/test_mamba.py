"""The Mamba block: its initialisation, its scan inputs, and step() reproducing forward() token by token."""

import math

import pytest
import torch
import torch.nn.functional as F

import ssm_edu
from ssm_edu import selective_scan
from ssm_edu.mamba import Mamba, mamba_block
from ssm_edu.numerics import rel_error, tolerance


def run_steps(block, u):
    """Feed u (b, L, d) through step() from a fresh cache; (b, L, d)."""
    cache = block.allocate_cache(u.shape[0])
    return torch.stack([block.step(u[:, t], cache) for t in range(u.shape[1])], dim=1)


@pytest.mark.parametrize("b,L,d_model,d_state,d_conv", [(1, 1, 8, 4, 4), (2, 13, 16, 16, 4), (3, 7, 12, 5, 2), (1, 40, 8, 3, 3)])
@pytest.mark.parametrize("scan_impl", ["naive", "vectorized", "chunked"])
def test_step_reproduces_forward_float64(b, L, d_model, d_state, d_conv, scan_impl):
    torch.manual_seed(0)
    block = Mamba(d_model, d_state=d_state, d_conv=d_conv, scan_impl=scan_impl, step_impl="vectorized").double()
    with torch.no_grad():  # a non-trivial state: bias the conv and D away from their init
        block.conv1d.bias.normal_()
        block.D.normal_()
    u = torch.randn(b, L, d_model, dtype=torch.float64)
    with torch.no_grad():
        y, y_steps = block(u), run_steps(block, u)
    assert y.shape == (b, L, d_model)
    assert rel_error(y_steps, y) < 1e-12


@pytest.mark.parametrize("step_impl", ["naive", "vectorized"])
def test_step_reproduces_forward_float32(step_impl):
    torch.manual_seed(1)
    block = Mamba(16, d_state=8, scan_impl="vectorized", step_impl=step_impl)
    u = torch.randn(2, 30, 16)
    with torch.no_grad():
        y, y_steps = block(u), run_steps(block, u)
    ref = block.double()(u.double()).detach()
    assert rel_error(y, ref) < tolerance(torch.float32) and rel_error(y_steps, ref) < tolerance(torch.float32)


def test_cache_is_updated_in_place_and_sized_by_batch():
    block = Mamba(8, d_state=4, d_conv=3)
    cache = block.allocate_cache(5)
    assert cache["conv"].shape == (5, 16, 3) and cache["ssm"].shape == (5, 16, 4)
    assert cache["ssm"].dtype == torch.float32
    conv, ssm = cache["conv"], cache["ssm"]
    with torch.no_grad():
        block.step(torch.randn(5, 8), cache)
    assert cache["conv"] is conv and cache["ssm"] is ssm and ssm.abs().sum() > 0


def test_initialisation():
    torch.manual_seed(0)
    block = Mamba(64, d_state=16, expand=2)
    assert block.d_inner == 128 and block.dt_rank == math.ceil(64 / 16)
    assert torch.allclose(block.A(), -torch.arange(1, 17, dtype=torch.float32).expand(128, 16), rtol=1e-6)  # S4D-Real
    assert torch.equal(block.D.detach(), torch.ones(128))
    dt = F.softplus(block.dt_proj.bias.detach())  # the initial Δ of each channel (δ = 0)
    assert bool(((dt >= 1e-3 * 0.999) & (dt <= 1e-1 * 1.001)).all())
    # log-uniform: about half of the channels below the geometric mean 1e-2
    assert 0.3 < (dt < 1e-2).float().mean().item() < 0.7
    s = 1 / math.sqrt(block.dt_rank)
    assert block.dt_proj.weight.abs().max() <= s
    assert block.A_log._no_weight_decay and block.D._no_weight_decay and block.dt_proj.bias._no_reinit
    floor = Mamba(8, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4)
    assert torch.allclose(F.softplus(floor.dt_proj.bias), torch.full((16,), 1e-4), rtol=1e-4)


def test_forward_is_the_scan_of_its_inputs():
    torch.manual_seed(0)
    block = Mamba(8, d_state=4).double()
    u = torch.randn(2, 9, 8, dtype=torch.float64)
    args = block.scan_inputs(u)
    assert args["u"].shape == args["z"].shape == args["delta"].shape == (2, 16, 9)
    assert args["B"].shape == args["C"].shape == (2, 4, 9) and args["A"].shape == (16, 4)
    y = selective_scan(**args, delta_softplus=True, impl="naive")
    assert rel_error(block(u), block.out_proj(y.mT)) < 1e-12
    # the conv is causal: changing u at t = 5 leaves outputs before 5 alone
    u2 = u.clone()
    u2[:, 5] += 1
    assert rel_error(block(u2)[:, :5], block(u)[:, :5]) < 1e-14


def test_gradients_agree_across_scan_impls():
    torch.manual_seed(0)
    block = Mamba(8, d_state=4).double()
    u = torch.randn(2, 11, 8, dtype=torch.float64)
    grads = {}
    for impl in ("naive", "vectorized", "chunked"):
        block.scan_impl = impl
        block.zero_grad()
        (block(u) ** 2).sum().backward()
        grads[impl] = {n: p.grad.clone() for n, p in block.named_parameters()}
    for impl in ("vectorized", "chunked"):
        for name, g in grads["naive"].items():
            assert g.abs().sum() > 0, name  # every parameter receives a gradient
            assert rel_error(grads[impl][name], g) < 1e-10, (impl, name)


def test_gradcheck_tiny():
    torch.manual_seed(0)
    block = Mamba(4, d_state=2, d_conv=2, scan_impl="vectorized").double()
    u = torch.randn(1, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (u,))


def test_triton_scan_inside_the_block():
    """The block with the Triton scan (the interpreter on CPU, compiled on a GPU: the block and its input on the
    default device, since a compiled kernel cannot read CPU tensors): float32 against the float64 block."""
    torch.manual_seed(0)
    device = ssm_edu.default_device()
    block = Mamba(8, d_state=4).to(device)
    u = torch.randn(1, 20, 8).to(device)
    # float32 convolutions through cuDNN may use TF32 by default: not here, where 1e-5 is asked of the scan
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = block.double()(u.double())
        block.float()
        block.scan_impl = "triton"
        out = block(u)
    assert out.device.type == device.type and out.dtype == torch.float32
    assert rel_error(out, ref) < tolerance(torch.float32)


def test_mamba_block_factory():
    block = mamba_block(d_state=3, expand=1)(10)
    assert isinstance(block, Mamba) and block.d_inner == 10 and block.d_state == 3
