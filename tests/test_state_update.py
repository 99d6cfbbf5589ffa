"""selective_state_update (chapter 7, decoding): token by token it reproduces
selective_scan; both layouts (Mamba-1 channels, Mamba-2 heads with stride-0
dt and A); the update is in place in every impl; the Triton kernel; bad input."""

import pytest
import torch

import ssm_edu
from ssm_edu import selective_scan, selective_state_update
from ssm_edu.numerics import rel_error, tolerance

DEVICE = ssm_edu.default_device()
ON_GPU = DEVICE.type == "cuda"
IMPLS = ["naive", "vectorized", "triton"]


def rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def sequence(batch, D, L, N, G, gen):
    """Inputs of selective_scan (B, C grouped when G is not None) with every option."""
    grouped = (batch,) if G is None else (batch, G)
    A = -(0.5 + torch.rand(D, N, generator=gen, dtype=torch.float64))
    return dict(u=rand(gen, batch, D, L), delta=0.5 * rand(gen, batch, D, L), A=A, B=rand(gen, *grouped, N, L),
                C=rand(gen, *grouped, N, L), D=rand(gen, D), z=rand(gen, batch, D, L), delta_bias=0.3 * rand(gen, D))


def decode(s, impl, dtype=torch.float64, state_dtype=None, device="cpu"):
    """Feed the sequence through selective_state_update one token at a time."""
    batch, D, L = s["u"].shape
    c = {k: v.to(device, dtype) for k, v in s.items()}
    state = torch.zeros(batch, D, s["A"].shape[1], dtype=state_dtype or dtype, device=device)
    ys = [selective_state_update(state, c["u"][..., t], c["delta"][..., t], c["A"], c["B"][..., t], c["C"][..., t],
                                 D=c["D"], z=c["z"][..., t], dt_bias=c["delta_bias"], dt_softplus=True, impl=impl)
          for t in range(L)]
    return torch.stack(ys, dim=-1), state


# (batch, D, L, N, G): batch 1, a single step, groups, N not a power of two
CASES = [(1, 1, 1, 1, None), (2, 4, 9, 3, None), (2, 6, 7, 4, 3), (1, 4, 5, 5, 4)]


@pytest.mark.parametrize("batch,D,L,N,G", CASES)
@pytest.mark.parametrize("impl", IMPLS)
def test_decoding_reproduces_selective_scan(batch, D, L, N, G, impl):
    s = sequence(batch, D, L, N, G, torch.Generator().manual_seed(batch * 100 + D))
    y_ref, h_ref = selective_scan(*[s[k] for k in "u delta A B C".split()], D=s["D"], z=s["z"],
                                  delta_bias=s["delta_bias"], delta_softplus=True, return_last_state=True, impl="naive")
    dtype = torch.float32 if impl == "triton" else torch.float64
    y, h = decode(s, impl, dtype, device=DEVICE if impl == "triton" else "cpu")
    bound = tolerance(dtype)
    assert y.dtype == dtype and rel_error(y, y_ref) < bound and rel_error(h, h_ref) < bound


def test_decoding_continues_a_prefix():
    """Scan a prefix, keep its last state, decode the rest: the same as scanning everything."""
    gen = torch.Generator().manual_seed(2)
    s = sequence(2, 4, 12, 3, 2, gen)
    names = "u delta A B C".split()
    opts = dict(D=s["D"], delta_bias=s["delta_bias"], delta_softplus=True)
    y_ref = selective_scan(*[s[k] for k in names], **opts, z=s["z"], impl="naive")
    cut = 7
    head = {k: (v[..., :cut] if v.dim() >= 3 else v) for k, v in s.items()}
    _, state = selective_scan(*[head[k] for k in names], **opts, z=head["z"], return_last_state=True, impl="vectorized")
    for t in range(cut, 12):
        out = selective_state_update(state, s["u"][..., t], s["delta"][..., t], s["A"], s["B"][..., t],
                                     s["C"][..., t], D=s["D"], z=s["z"][..., t], dt_bias=s["delta_bias"],
                                     dt_softplus=True)
        assert rel_error(out, y_ref[..., t]) < 1e-13


def headed(batch, H, P, N, G, gen, scalar=True):
    """Mamba-2's arguments: dt, A (and dt_bias, D) one number per head, broadcast with stride 0."""
    if scalar:
        dt = rand(gen, batch, H)[..., None].expand(batch, H, P)
        A = (-(0.5 + torch.rand(H, generator=gen, dtype=torch.float64)))[:, None, None].expand(H, P, N)
        bias = (0.3 * rand(gen, H))[:, None].expand(H, P)
    else:
        dt, A, bias = rand(gen, batch, H, P), -(0.5 + torch.rand(H, P, N, generator=gen, dtype=torch.float64)), rand(gen, H, P)
    return dict(state=rand(gen, batch, H, P, N), x=rand(gen, batch, H, P), dt=dt, A=A,
                B=rand(gen, batch, G, N) if G else rand(gen, batch, N), C=rand(gen, batch, G, N) if G else rand(gen, batch, N),
                D=rand(gen, H, P), z=rand(gen, batch, H, P), dt_bias=bias)


def run(args, impl, dtype=torch.float64, state_dtype=None, device="cpu"):
    a = {k: v.to(device, dtype) for k, v in args.items()}
    state = args["state"].to(device, state_dtype or dtype).clone()
    out = selective_state_update(state, a["x"], a["dt"], a["A"], a["B"], a["C"], D=a["D"], z=a["z"],
                                 dt_bias=a["dt_bias"], dt_softplus=True, impl=impl)
    return out, state


@pytest.mark.parametrize("batch,H,P,N,G", [(1, 1, 1, 1, None), (2, 4, 3, 5, 2), (3, 2, 8, 4, 1), (1, 6, 5, 16, 3)])
@pytest.mark.parametrize("scalar", [True, False])
def test_headed_layout_equals_the_channel_layout(batch, H, P, N, G, scalar):
    """(b, H, P, N) is (b, H·P, N) with channel h·P + p: compare with the naive channel form."""
    a = headed(batch, H, P, N, G, torch.Generator().manual_seed(H * 10 + P), scalar)
    flat = dict(state=a["state"].flatten(1, 2).clone(), x=a["x"].flatten(1), dt=a["dt"].flatten(1),
                A=a["A"].flatten(0, 1), B=a["B"], C=a["C"], D=a["D"].flatten(), z=a["z"].flatten(1),
                dt_bias=a["dt_bias"].flatten())
    ref_out, ref_state = run(flat, "naive")
    for impl in IMPLS:
        dtype = torch.float32 if impl == "triton" else torch.float64
        out, state = run(a, impl, dtype, device=DEVICE if impl == "triton" else "cpu")
        assert out.shape == (batch, H, P) and state.shape == (batch, H, P, N)
        assert rel_error(out.flatten(1), ref_out) < tolerance(dtype), impl
        assert rel_error(state.flatten(1, 2), ref_state) < tolerance(dtype), impl


@pytest.mark.parametrize("impl", IMPLS)
def test_update_is_in_place_even_for_strided_states(impl):
    """The cache tensor itself changes, also when the state is a strided view of a larger cache."""
    gen = torch.Generator().manual_seed(4)
    a = headed(2, 4, 3, 5, 2, gen)
    dtype = torch.float32 if impl == "triton" else torch.float64
    dev = DEVICE if impl == "triton" else "cpu"
    ref_out, ref_state = run(a, "naive")
    c = {k: v.to(dev, dtype) for k, v in a.items()}
    cache = torch.zeros(3, 2, 4, 5, 3, dtype=dtype, device=dev)  # (layer, b, H, N, P): the state is slot 1, transposed
    cache[1] = c["state"].transpose(-1, -2)
    view = cache[1].transpose(-1, -2)  # (b, H, P, N), not contiguous
    assert not view.is_contiguous()
    out = selective_state_update(view, c["x"], c["dt"], c["A"], c["B"], c["C"], D=c["D"], z=c["z"],
                                 dt_bias=c["dt_bias"], dt_softplus=True, impl=impl)
    assert rel_error(out, ref_out) < tolerance(dtype)
    assert rel_error(cache[1].transpose(-1, -2), ref_state) < tolerance(dtype)
    assert cache[0].abs().sum() == 0 and cache[2].abs().sum() == 0
    # the channel layout too, with a float32 state under float64 inputs for naive/vectorized
    flat_state = torch.zeros(2, 6, 3, dtype=torch.float32, device=dev)
    before = flat_state.clone()
    s = sequence(2, 6, 1, 3, 3, gen)
    selective_state_update(flat_state, s["u"][..., 0].to(dev, dtype), s["delta"][..., 0].to(dev, dtype),
                           s["A"].to(dev, dtype), s["B"][..., 0].to(dev, dtype), s["C"][..., 0].to(dev, dtype),
                           impl=impl)
    assert flat_state.dtype == torch.float32 and not torch.equal(flat_state, before)


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_low_precision(state_dtype):
    """bfloat16 inputs and a float32 or bfloat16 state: within the bfloat16 tolerance of float64."""
    a = headed(2, 4, 8, 16, 2, torch.Generator().manual_seed(9), scalar=False)
    rounded = {k: v.to(torch.bfloat16).double() for k, v in a.items()}
    ref_out, ref_state = run(rounded, "naive")
    out, state = run(a, "triton", torch.bfloat16, state_dtype=state_dtype, device=DEVICE)
    assert out.dtype == torch.bfloat16 and state.dtype == state_dtype
    assert rel_error(out, ref_out) < tolerance(torch.bfloat16)
    assert rel_error(state, ref_state) < tolerance(torch.bfloat16)


@pytest.mark.skipif(not ON_GPU, reason="large shapes compiled on a GPU only")
def test_triton_large_shapes_on_gpu():
    a = headed(16, 24, 64, 128, 1, torch.Generator().manual_seed(1))
    ref_out, ref_state = run(a, "vectorized", torch.float64, device=DEVICE)
    out, state = run(a, "triton", torch.float32, device=DEVICE)
    assert rel_error(out, ref_out) < 1e-5 and rel_error(state, ref_state) < 1e-5


def test_float64_state_uses_the_tiers_and_triton_refuses_it():
    a = headed(1, 2, 2, 3, None, torch.Generator().manual_seed(0))
    out, _ = run(a, "auto")
    assert rel_error(out, run(a, "naive")[0]) < 1e-14
    with pytest.raises(ValueError, match="impl='triton' computes in float32"):
        run(a, "triton", device=DEVICE)


# ---------------------------------------------------------------- bad input

b, D, N = 2, 4, 3
OK = dict(state=torch.zeros(b, D, N), x=torch.zeros(b, D), dt=torch.zeros(b, D), A=torch.zeros(D, N),
          B=torch.zeros(b, N), C=torch.zeros(b, N))


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(state=torch.zeros(D, N)), r"state must have shape \(batch, D, N\) or \(batch, H, P, N\); got \(4, 3\)"),
        (dict(x=torch.zeros(b, D + 1)), r"x must have shape \(batch, D\) = \(2, 4\); got \(2, 5\)"),
        (dict(dt=torch.zeros(b, D, 1)), r"dt must have shape \(batch, D\) = \(2, 4\); got \(2, 4, 1\)"),
        (dict(A=torch.zeros(D, N + 1)), r"A must have shape \(D, N\) = \(4, 3\); got \(4, 4\)"),
        (dict(B=torch.zeros(b, 3, N)), r"the number of groups G of B must divide D = 4; got B of shape \(2, 3, 3\)"),
        (dict(C=torch.zeros(b + 1, N)), r"C must have shape \(batch, N\) = \(2, 3\) or \(batch, G, N\) = \(2, G, 3\); got \(3, 3\)"),
        (dict(D=torch.zeros(2, 2)), r"D must have shape \(D,\) = \(4,\); got \(2, 2\)"),
        (dict(dt_bias=torch.zeros(b, D)), r"dt_bias must have shape \(D,\) = \(4,\); got \(2, 4\)"),
        (dict(state=torch.zeros(b, 2, 2, N), x=torch.zeros(b, 2, 2), dt=torch.zeros(b, 2, 2)), r"A must have shape \(H, P, N\) = \(2, 2, 3\); got \(4, 3\)"),
        (dict(x=torch.zeros(b, D, dtype=torch.int32)), r"x has dtype int32"),
        (dict(B=torch.zeros(b, N, device="meta")), r"one device"),
    ],
)
@pytest.mark.parametrize("impl", ["naive", "triton"])
def test_state_update_bad_input(change, match, impl):
    with pytest.raises(ValueError, match=match):
        selective_state_update(**{**OK, **change}, impl=impl)


def test_state_update_bad_impl():
    with pytest.raises(ValueError, match=r"unknown impl='loop'; valid: 'auto', 'naive', 'vectorized', 'triton'"):
        selective_state_update(**OK, impl="loop")
