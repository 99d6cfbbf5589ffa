"""Inference and long context (chapter 10): what a decoding cache costs, prefill, streaming, decode speed.

Symbols -> code:  T (tokens processed so far, the context) -> context,
D -> d_model,  E (expand) -> block.d_inner / d_model,  N -> d_state,
H, P (heads, head width) -> n_heads, head_dim,  W (conv width) -> d_conv,
e (bytes per element of the model's dtype) -> element size,
h_{-1} (the state a chunk starts from) -> initial_state.
Shapes: b batch, l chunk length, L sequence length.

A block's *decoding cache* is everything ``step`` keeps between tokens
(``ssm_edu.lm``'s block protocol). Its size per layer, from the modules'
shapes (``layer_cache_bytes``):

    attention (KV cache)   2 · b · H · P · T · e        grows with T
    Mamba-1                b · (E D · W · e + E D · N · 4)          constant
    Mamba-2                b · ((E D + 2GN) · W · e + H P N · 4)    constant
    Mamba-3                b · H · (P N + N/2 + N + P) · 4 (SISO)   constant

(the SSM states are kept in float32 at least, hence the 4). ``cache_nbytes``
counts the bytes of actual cache tensors, and the tests check the two agree.

Prefill, decode and streaming are one operation, ``extend(model, tokens,
caches)``: run a chunk of tokens through the model *after* the positions the
caches already hold, with the parallel form (scan, SSD, SDPA), and leave the
caches at the end of the chunk. With fresh caches that is prefill; chunk
after chunk it is streaming; with one token it is a decoding step. For each
block (``extend_block``):

* Mamba-1: the conv window carried in front of the chunk, then
  ``selective_scan_from`` (below), then the window and state written back;
* Mamba-2: the conv window, then ``ssd(initial_states=h, return_final_states=True)``;
* Mamba-3: ``mamba3(initial_state=..., return_final_state=True)`` (no conv);
* attention: ``CausalSelfAttention.extend`` (SDPA over cache + chunk);
* any other block with ``step``: the step over the chunk, token by token.

The first three reach into the blocks' projections (``in_proj``, ``conv1d``,
``x_proj``, ``dt_proj``, ``_split``, ``_xbc``, ``_out``) to rebuild forward
with a carried state: the blocks' own ``forward`` always starts from zero.

``selective_scan`` (Mamba-1's API, like mamba_ssm's) returns its last state
but takes no initial one. ``selective_scan_from`` adds it by linearity: the
scan from h_{-1} is the scan from zero plus the free evolution of h_{-1},

    h_t = (Π_{r<=t} exp(Δ_r A)) ⊙ h_{-1} + h_t^(0),   y_t += <(Π_{r<=t} exp(Δ_r A)) ⊙ h_{-1}, C_t>,

the same split as the off-diagonal step of chunked SSD (chapter 8).

Timing (``decode_profile``): the wall time of a decoding step with a cache
as if T tokens had been processed (``filled_caches``: T random keys and
values in every KV cache; the SSM states are the same size whatever T).
The numbers in a cache do not change the work of a step, only its size does.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import Shapes
from .attention import CausalSelfAttention, MLP, TransformerBlock, kv_cache_bytes
from .mamba import Mamba
from .mamba2 import Mamba2
from .mamba3 import mamba3
from .mamba3_block import Mamba3
from .selective import selective_scan
from .ssd import ssd

__all__ = [
    "layer_cache_bytes",
    "model_cache_bytes",
    "cache_nbytes",
    "selective_scan_from",
    "extend_block",
    "extend",
    "prefill",
    "generate_with_prefill",
    "filled_caches",
    "decode_profile",
    "long_context_profile",
    "matched_models",
    "gpu_decode_rows",
    "gpu_long_context_rows",
    "draw_cache_bytes",
    "draw_decode",
    "draw_long_context",
    "cache_bytes_explorer",
]


# ----------------------------------------------------------------------------
# Bytes of a decoding cache
# ----------------------------------------------------------------------------


def _state_size(dtype) -> int:
    """Bytes per element of an SSM state: float32 at least (float64 for a float64 model)."""
    return torch.tensor([], dtype=torch.promote_types(dtype, torch.float32)).element_size()


def layer_cache_bytes(block: nn.Module, context: int, batch: int = 1, dtype=torch.float32) -> int:
    """Bytes of ``block``'s decoding cache after ``context`` tokens, from the module's shapes (the table above).

    ``dtype`` is the model's (the conv window and a KV cache are stored in it;
    SSM states in float32 at least).
    """
    e = torch.tensor([], dtype=dtype).element_size()
    s = _state_size(dtype)
    if isinstance(block, TransformerBlock):
        block = block.attn
    if isinstance(block, CausalSelfAttention):
        return 2 * batch * block.n_heads * block.head_dim * context * e
    if isinstance(block, MLP):
        return 0
    if isinstance(block, Mamba):
        return batch * (block.d_inner * block.d_conv * e + block.d_inner * block.d_state * s)
    if isinstance(block, Mamba2):
        return batch * (block.conv_dim * block.d_conv * e + block.nheads * block.headdim * block.d_state * s)
    if isinstance(block, Mamba3):
        H, P, N, R = block.nheads, block.headdim, block.d_state, block.rank
        return batch * H * (P * N + N // 2 + R * N + R * P) * s  # h, Φ, previous k and x
    raise TypeError(f"layer_cache_bytes: no formula for a {type(block).__name__} block")


def model_cache_bytes(model: nn.Module, context: int, batch: int = 1, dtype=None) -> int:
    """Sum of ``layer_cache_bytes`` over a ``SequenceModel``'s blocks (dtype: the model's by default)."""
    dtype = model.embedding.weight.dtype if dtype is None else dtype
    return sum(layer_cache_bytes(b, context, batch, dtype) for b in model.blocks)


def cache_nbytes(cache) -> int:
    """Bytes held by actual cache tensors: a block's cache, or a model's list of them.

    A KV cache counts its used part (``length`` positions), not its spare capacity.
    """
    if isinstance(cache, dict) and "length" in cache and "k" in cache:
        return kv_cache_bytes(cache)
    if isinstance(cache, torch.Tensor):
        return cache.numel() * cache.element_size()
    if isinstance(cache, dict):
        return sum(cache_nbytes(v) for v in cache.values())
    if isinstance(cache, (list, tuple)):  # a model's caches, or a Mamba3State
        return sum(cache_nbytes(v) for v in cache)
    return 0


# ----------------------------------------------------------------------------
# Mamba-1's scan from a given state
# ----------------------------------------------------------------------------


def selective_scan_from(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        initial_state=None, impl="auto"):
    """``selective_scan`` started from h_{-1} = ``initial_state`` (b, D, N); returns (y, h_{L-1}).

    Arguments as ``ssm_edu.selective_scan`` (u, delta, z (b, D, L); A (D, N);
    B, C (b, N, L) or (b, G, N, L)). The scan from zero runs with ``impl``
    (the Triton kernel on a GPU); the initial state's contribution is added
    by linearity (module docstring), which materialises (b, D, N, L): meant
    for chunks, not whole long sequences.
    """
    y, h = selective_scan(u, delta, A, B, C, D=D, z=None, delta_bias=delta_bias, delta_softplus=delta_softplus,
                          return_last_state=True, impl=impl)  # y (b, D, L), h (b, D, N), from zero
    if initial_state is not None:
        Shapes("selective_scan_from").check("initial_state", initial_state, f"{u.shape[0]} {A.shape[0]} {A.shape[1]}")
        work = torch.promote_types(u.dtype, torch.float32)
        dt = (delta if delta_bias is None else delta + delta_bias[:, None]).to(work)  # (b, D, L)
        dt = F.softplus(dt) if delta_softplus else dt
        decay = torch.exp(torch.cumsum(dt, -1)[:, :, None, :] * A.to(work)[None, :, :, None])  # (b, D, N, L)
        free = decay * initial_state.to(work)[..., None]  # (b, D, N, L): h_{-1} evolved with no input
        Cd = C.to(work)
        Cd = Cd.unsqueeze(1) if Cd.dim() == 3 else Cd.repeat_interleave(A.shape[0] // Cd.shape[1], dim=1)
        y = (y.to(work) + (free * Cd).sum(2)).to(y.dtype)  # (b, D, L)
        h = (h.to(work) + free[..., -1]).to(h.dtype)
    if z is not None:
        y = y * F.silu(z)
    return y, h


# ----------------------------------------------------------------------------
# Prefill, streaming, decode: extend
# ----------------------------------------------------------------------------


def _conv_with_window(conv1d: nn.Conv1d, window: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Causal depthwise conv of a chunk x (b, C, l) after the cached window (b, C, W); updates the window.

    The window holds the last W inputs (oldest first, zeros before the
    sequence), as ``step`` keeps it. Returns the conv's l outputs (b, C, l).
    """
    W = window.shape[-1]
    full = torch.cat([window[..., 1:], x], dim=-1)  # (b, C, W - 1 + l): the W - 1 inputs before the chunk, then it
    window.copy_(full[..., -W:])
    return F.conv1d(full, conv1d.weight, conv1d.bias, groups=conv1d.groups)  # (b, C, l)


def _extend_mamba(block: Mamba, u, cache):
    x, z = block.in_proj(u).mT.chunk(2, dim=1)  # (b, d_inner, l) each
    x = F.silu(_conv_with_window(block.conv1d, cache["conv"], x))
    delta_low, B, C = block.x_proj(x.mT).split([block.dt_rank, block.d_state, block.d_state], dim=-1)
    delta = (delta_low @ block.dt_proj.weight.T).mT  # (b, d_inner, l)
    y, h = selective_scan_from(x, delta, block.A(), B.mT, C.mT, D=block.D, z=z, delta_bias=block.dt_proj.bias,
                               delta_softplus=True, initial_state=cache["ssm"], impl=block.scan_impl)
    cache["ssm"].copy_(h)
    return block.out_proj(y.mT)  # (b, l, d_model)


def _extend_mamba2(block: Mamba2, u, cache):
    z, xBC, dt = block._split(block.in_proj(u))  # (b, l, Din), (b, l, conv_dim), (b, l, H)
    xBC = F.silu(_conv_with_window(block.conv1d, cache["conv"], xBC.mT)).mT  # (b, l, conv_dim)
    x, B, C = block._xbc(xBC)  # (b, l, H, P), (b, l, G, N) twice
    impl = {"quadratic": "vectorized"}.get(block.impl, block.impl)
    y, h = ssd(x, dt, -torch.exp(block.A_log), B, C, chunk_size=block.chunk_size, D=block.D, dt_bias=block.dt_bias,
               dt_softplus=True, initial_states=cache["ssm"].to(x.dtype), return_final_states=True, impl=impl)
    cache["ssm"].copy_(h)
    return block.out_proj(block.norm(y.flatten(-2), z))


def _extend_mamba3(block: Mamba3, u, cache):
    s = block.ssm_inputs(u)
    y, cache["state"] = mamba3(s["x"], s["dt"], s["A"], s["B"], s["C"], s["lam"], s["theta"], D=block.D, z=s["z"],
                               chunk_size=block.chunk_size, initial_state=cache["state"], return_final_state=True,
                               impl=block.impl)
    return block._out(y)


def extend_block(block: nn.Module, u: torch.Tensor, cache) -> torch.Tensor:
    """Run a chunk u (b, l, d_model) through ``block`` after the positions ``cache`` holds; update ``cache``.

    Returns (b, l, d_model), equal to the matching rows of ``forward`` on the
    whole sequence. Parallel forms for attention and the Mamba blocks; any
    other block with ``step`` runs the step token by token.
    """
    if hasattr(block, "extend"):
        return block.extend(u, cache)
    if isinstance(block, Mamba):
        return _extend_mamba(block, u, cache)
    if isinstance(block, Mamba2):
        return _extend_mamba2(block, u, cache)
    if isinstance(block, Mamba3):
        return _extend_mamba3(block, u, cache)
    if hasattr(block, "step"):  # no parallel form with a carried state: the recurrence itself
        return torch.stack([block.step(u[:, t], cache) for t in range(u.shape[1])], dim=1)
    raise NotImplementedError(f"{type(block).__name__} has neither extend nor step: it cannot carry a state")


@torch.no_grad()
def extend(model: nn.Module, idx: torch.Tensor, caches: list) -> torch.Tensor:
    """Tokens idx (b, l) after those in ``caches`` -> logits (b, l, vocab); ``caches`` move to the chunk's end.

    ``model`` is a ``ssm_edu.lm.SequenceModel``. Chunk after chunk, the
    logits equal ``model(whole sequence)``: prefill is ``extend`` on fresh
    caches, streaming is ``extend`` again and again, decoding is l = 1.
    """
    Shapes("extend").check("idx", idx, "b l")
    h = model.embedding(idx)  # (b, l, d)
    for norm, block, cache in zip(model.norms, model.blocks, caches):
        h = h + extend_block(block, norm(h), cache)
    return model.head(model.norm_f(h))


def prefill(model: nn.Module, prompt: torch.Tensor):
    """The prompt (b, T) in one parallel pass: returns (logits (b, T, vocab), caches at position T - 1)."""
    caches = model.allocate_cache(prompt.shape[0])
    return extend(model, prompt, caches), caches


@torch.no_grad()
def generate_with_prefill(model: nn.Module, prompt: torch.Tensor, n_new: int, temperature: float = 0.0,
                          top_k: int | None = None, gen=None) -> torch.Tensor:
    """``ssm_edu.lm.generate`` with the prompt prefilled in parallel, then one ``step`` per new token: (b, T + n_new)."""
    from .lm import _sample

    if isinstance(gen, int):
        gen = torch.Generator().manual_seed(gen)
    logits, caches = prefill(model, prompt)
    logits, seq = logits[:, -1], prompt
    for _ in range(n_new):
        token = _sample(logits, temperature, top_k, gen)
        seq = torch.cat([seq, token[:, None]], dim=1)
        logits = model.step(token, caches)
    return seq


# ----------------------------------------------------------------------------
# Decode speed and memory as the context grows
# ----------------------------------------------------------------------------


def filled_caches(model: nn.Module, context: int, batch: int = 1, room: int = 64) -> list:
    """Caches as if ``context`` tokens had been processed, for timing: random keys and values in every KV cache.

    Every KV cache holds ``context`` positions (capacity ``context + room``,
    so that timed steps do not reallocate); SSM states and conv windows are
    random too (their size does not depend on the context).
    """
    w = model.embedding.weight
    caches = []
    for block in model.blocks:
        attn = block.attn if isinstance(block, TransformerBlock) else block
        if isinstance(attn, CausalSelfAttention):
            cache = block.allocate_cache(batch, device=w.device, dtype=w.dtype, capacity=context + room)
            cache["k"][:, :, :context].normal_()
            cache["v"][:, :, :context].normal_()
            cache["length"] = context
        else:
            cache = block.allocate_cache(batch, device=w.device, dtype=w.dtype)
            for t in (cache.values() if isinstance(cache, dict) else []):
                for x in (t if isinstance(t, tuple) else (t,)):
                    if isinstance(x, torch.Tensor) and x.is_floating_point():
                        x.normal_().mul_(0.1)
        caches.append(cache)
    return caches


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def decode_profile(models: dict, contexts: Iterable[int], n_tokens: int = 8, batch: int = 1, warmup: int = 2,
                   max_seconds: float = 1.0) -> list[dict]:
    """Time a decoding step of every model at every context length.

    ``models``: name -> ``SequenceModel`` (all on one device). For each
    context T: caches from ``filled_caches``, ``warmup`` steps, then
    ``n_tokens`` timed steps (each synchronised on a GPU). A model stops once
    one step takes longer than ``max_seconds``.
    Returns rows {"model", "context", "s_per_token" (median), "cache_bytes"
    (of the actual tensors), "param_bytes", "peak_bytes" (GPU: the most
    allocated during the steps; CPU: cache + parameters)}.
    """
    import time

    rows = []
    for name, model in models.items():
        model.eval()
        w = model.embedding.weight
        dev = w.device
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for T in contexts:
            caches = filled_caches(model, T, batch, room=warmup + n_tokens + 1)
            cache_bytes = cache_nbytes(caches)  # at T tokens, before the steps add theirs
            token = torch.zeros(batch, dtype=torch.long, device=dev)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            for _ in range(warmup):
                model.step(token, caches)
            times = []
            for _ in range(n_tokens):
                _sync(dev)
                t0 = time.perf_counter()
                model.step(token, caches)
                _sync(dev)
                times.append(time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else cache_bytes + param_bytes
            median = sorted(times)[len(times) // 2]
            rows.append({"model": name, "context": T, "s_per_token": median, "cache_bytes": cache_bytes,
                         "param_bytes": param_bytes, "peak_bytes": peak})
            del caches
            if median > max_seconds:
                break
    return rows


def matched_models(vocab_size: int, d_model: int, n_layers: int, which=("Transformer", "Mamba-1", "Mamba-2", "Mamba-3"),
                   n_heads: int | None = None, device=None, dtype=None, seed: int = 0, **block_kwargs) -> dict:
    """Models of about the same size: a Transformer of ``n_layers`` and SSMs of ``2 * n_layers``.

    A parallel Transformer layer (attention 4D², MLP 8D²) holds about 12 D²
    parameters; a Mamba layer with expand 2 about 6 D² (Gu & Dao 2023 match
    sizes the same way). Heads of 64 (or D / 4 when D < 256); Mamba-2/3 heads
    of 64 channels (or D / 2, whichever is smaller) and N = 64; Mamba-1 N = 16.
    ``block_kwargs`` (e.g. ``impl``) go to the Mamba-2/3 blocks.
    """
    from .attention import transformer_block
    from .lm import SequenceModel
    from .mamba import mamba_block
    from .mamba2 import mamba2_block
    from .mamba3_block import mamba3_block

    n_heads = n_heads or max(1, d_model // 64 if d_model >= 256 else 4)
    headdim = min(64, d_model // 2)
    factories = {
        "Transformer": (n_layers, transformer_block(n_heads=n_heads)),
        "Mamba-1": (2 * n_layers, mamba_block(d_state=16)),
        "Mamba-2": (2 * n_layers, mamba2_block(d_state=64, headdim=headdim, **block_kwargs)),
        "Mamba-3": (2 * n_layers, mamba3_block(d_state=64, headdim=headdim, **block_kwargs)),
    }
    out = {}
    for name in which:
        torch.manual_seed(seed)
        layers, factory = factories[name]
        model = SequenceModel(vocab_size, d_model, layers, factory)
        out[name] = model.to(device=device, dtype=dtype).eval()
    return out


# ----------------------------------------------------------------------------
# Long sequences: the scan and SSD against causal attention
# ----------------------------------------------------------------------------


@torch.no_grad()
def long_context_profile(lengths: Iterable[int], d: int = 1024, n: int = 16, heads: int = 16, headdim: int = 64,
                         d_state: int = 64, device=None, dtype=torch.float32, max_seconds: float = 2.0,
                         scan_impl: str = "auto") -> list[dict]:
    """Time, at batch 1, the selective scan (D = d, N = n), SSD (H = heads, P = headdim, N = d_state, G = 1)
    and causal SDPA (H = heads, P = headdim) at every length L; the rows of benchmarks' op "long_context".

    Returns rows {"op", "impl", "shape", "L", "median_us", "peak_mib"} with the
    benchmark's shape strings. ``peak_mib`` is measured on a GPU (memory a
    call allocates beyond its inputs) and None on a CPU. ``scan_impl``: "auto"
    is the Triton kernel on a GPU and the chunked scan on a CPU (bounded
    memory: (b, D, N, 256)). A line stops once a call exceeds ``max_seconds``.
    """
    from .timing import median_time

    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    scan_impl = ("triton" if gpu else "chunked") if scan_impl == "auto" else scan_impl
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, lo=None, hi=None):
        x = torch.rand(*shape, device=device, generator=gen) if lo is not None else torch.randn(*shape, device=device, generator=gen)
        return (lo + (hi - lo) * x if lo is not None else x).to(dtype)

    def peak_mib(fn):
        if not gpu:
            return None
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20

    rows, alive = [], {"selective_scan": True, "ssd": True, "sdpa_causal": True}
    for L in lengths:
        calls = {}
        if alive["selective_scan"]:
            u, delta = rand(1, d, L), rand(1, d, L, lo=1e-3, hi=1e-1)
            A = -torch.exp(0.5 * torch.randn(d, n, device=device, generator=gen))
            B, C = rand(1, n, L), rand(1, n, L)
            calls["selective_scan"] = (scan_impl, f"B1 D{d} L{L} N{n}",
                                       lambda: selective_scan(u, delta, A, B, C, impl=scan_impl))
        if alive["ssd"]:
            x, dt = rand(1, L, heads, headdim), rand(1, L, heads, lo=1e-3, hi=1e-1)
            A2 = -torch.exp(torch.randn(heads, device=device, generator=gen))
            B2, C2 = rand(1, L, 1, d_state), rand(1, L, 1, d_state)
            calls["ssd"] = ("triton" if gpu else "vectorized", f"B1 L{L} H{heads} P{headdim} N{d_state} G1",
                            lambda: ssd(x, dt, A2, B2, C2, impl="auto"))
        if alive["sdpa_causal"]:
            q, k, v = (rand(1, heads, L, headdim) for _ in range(3))
            calls["sdpa_causal"] = ("torch", f"B1 H{heads} L{L} P{headdim}",
                                    lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        for op, (impl, shape, fn) in calls.items():
            seconds = median_time(fn, repeats=3, warmup=1, budget_s=max_seconds)
            rows.append({"op": op, "impl": impl, "shape": shape, "L": L, "median_us": 1e6 * seconds,
                         "peak_mib": peak_mib(fn)})
            alive[op] = seconds < max_seconds
    return rows


# ----------------------------------------------------------------------------
# The GPU measurements stored with the book (benchmarks/decode.py, op "long_context")
# ----------------------------------------------------------------------------


def gpu_decode_rows() -> list[dict]:
    """The stored "decode" rows as ``decode_profile`` rows (model, context, s_per_token, peak_bytes, ...).

    Empty when this copy of the book holds no GPU measurements of decoding.
    """
    import re

    from .results import rows

    names = {"transformer": "Transformer", "mamba1": "Mamba-1", "mamba2": "Mamba-2", "mamba3": "Mamba-3"}
    out = []
    for r in rows("decode"):
        m = re.fullmatch(r"B1 ctx(\d+) d(\d+) layers(\d+)", r["shape"])
        if not m or not r.get("median_us"):
            continue
        out.append({"model": names.get(r["impl"], r["impl"]), "context": int(m.group(1)), "d_model": int(m.group(2)),
                    "layers": int(m.group(3)), "s_per_token": 1e-6 * r["median_us"], "floor_s": 1e-6 * r["floor_us"],
                    "peak_bytes": (r.get("peak_mib") or 0) * 2**20, "cache_bytes": r.get("cache_mib", 0) * 2**20,
                    "device": r["device"], "dtype": r["dtype"]})
    return out


def gpu_long_context_rows() -> list[dict]:
    """The stored rows of benchmarks' op "long_context" (batch 1, L = 2^10 .. 2^20), each with its L.

    The selective scan "B1 D1024 L{L} N16", SSD "B1 L{L} H16 P64 N64 G1" and
    causal SDPA "B1 H16 L{L} P64". Empty when none are stored.
    """
    import re

    from .results import rows

    patterns = {"selective_scan": r"B1 D1024 L(\d+) N16", "ssd": r"B1 L(\d+) H16 P64 N64 G1", "sdpa_causal": r"B1 H16 L(\d+) P64"}
    out = []
    for op, pattern in patterns.items():
        for r in rows(op):
            m = re.fullmatch(pattern, r["shape"])
            if m and r.get("median_us"):
                out.append(r | {"L": int(m.group(1))})
    return out


# ----------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------


def draw_cache_bytes(ax, d_model: int = 1024, d_state: int = 128, log2_context: int = 16, n_heads: int | None = None,
                     dtype_bytes: int = 2, expand: int = 2, d_conv: int = 4):
    """Bytes per layer against the context T: a KV cache (2 D T e) against SSM states (E D N · 4), log-log.

    The SSM lines use the Mamba-2 layout (E D channels, state N each, G = 1);
    a Mamba-1 layer with N = 16 is drawn too. The marker is at T = 2^log2_context;
    the crossover T* = E N · 4 / (2 e) is labelled.
    """
    T = torch.logspace(0, 20, 81, base=2.0)
    kv = 2 * d_model * T * dtype_bytes  # H·P = D
    conv = lambda N: (expand * d_model + 2 * N) * d_conv * dtype_bytes  # noqa: E731
    ssm = expand * d_model * d_state * 4 + conv(d_state)
    ssm1 = expand * d_model * 16 * 4 + expand * d_model * d_conv * dtype_bytes
    ax.loglog(T, kv / 2**20, label=f"KV cache (D = {d_model}, {8 * dtype_bytes}-bit)")
    ax.loglog(T, torch.full_like(T, ssm / 2**20), label=f"Mamba-2 state (N = {d_state})")
    ax.loglog(T, torch.full_like(T, ssm1 / 2**20), "--", label="Mamba-1 state (N = 16)")
    cross = ssm / (2 * d_model * dtype_bytes)
    ax.axvline(cross, color="0.6", lw=0.8)
    ax.annotate(f"T* ≈ {cross:,.0f}", (cross, ssm / 2**20), textcoords="offset points", xytext=(6, 8), fontsize=9)
    t = 2 ** log2_context
    ax.plot([t, t], [ssm / 2**20, 2 * d_model * t * dtype_bytes / 2**20], "D", color="#CC79A7", ms=6,
            label=f"T = 2^{log2_context}")
    ax.set_title(f"T = 2^{log2_context}: KV {2 * d_model * t * dtype_bytes / 2**20:,.1f} MiB vs state {ssm / 2**20:,.2f} MiB")
    ax.set_xlabel("context T [tokens]")
    ax.set_ylabel("decoding cache per layer [MiB]")
    ax.legend()
    return ax


def draw_decode(rows: list[dict], axes, device: str, time_key: str = "s_per_token", scale: float = 1e3,
                unit: str = "ms"):
    """Two panels from ``decode_profile``-like rows: time per token and memory against the context."""
    ax_t, ax_m = axes
    for name in dict.fromkeys(r["model"] for r in rows):
        rs = sorted((r for r in rows if r["model"] == name and r.get(time_key)), key=lambda r: r["context"])
        if not rs:
            continue
        ctx = [r["context"] for r in rs]
        ax_t.loglog(ctx, [scale * r[time_key] for r in rs], "o-", label=name, ms=3)
        ax_m.loglog(ctx, [r["peak_bytes"] / 2**20 for r in rs], "o-", label=name, ms=3)
    ax_t.set_xlabel("context T [tokens]")
    ax_t.set_ylabel(f"time per generated token [{unit}]")
    ax_t.set_title(f"decoding, batch 1 ({device})")
    ax_m.set_xlabel("context T [tokens]")
    ax_m.set_ylabel("memory [MiB]")
    ax_m.set_title("parameters + cache" if "CPU" in device else "peak GPU memory")
    ax_t.legend()
    return axes


def draw_long_context(rows: list[dict], axes, device: str):
    """Time (and, where measured, peak memory) against L for the scan, SSD and causal SDPA, log-log."""
    ax_t, ax_m = axes
    labels = {"selective_scan": "selective scan (Mamba-1)", "ssd": "SSD (Mamba-2)", "sdpa_causal": "causal SDPA"}
    for op, label in labels.items():
        rs = sorted((r for r in rows if r["op"] == op and r.get("median_us")), key=lambda r: r["L"])
        if not rs:
            continue
        Ls = [r["L"] for r in rs]
        ax_t.loglog(Ls, [r["median_us"] / 1e3 for r in rs], "o-", label=label, ms=3, base=2)
        mem = [(r["L"], r["peak_mib"]) for r in rs if r.get("peak_mib") is not None]
        if ax_m is not None and mem:
            ax_m.loglog(*zip(*mem), "o-", label=label, ms=3, base=2)
    ax_t.set_xlabel("sequence length L [tokens]")
    ax_t.set_ylabel("time per call [ms]")
    ax_t.set_title(f"batch 1, forward ({device})")
    ax_t.legend()
    if ax_m is not None:
        ax_m.set_xlabel("sequence length L [tokens]")
        ax_m.set_ylabel("memory allocated by the call [MiB]")
        ax_m.set_title(f"peak memory ({device})")
    return axes


def _cache_bytes_figure(log2_context, d_model, d_state):
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=(7, 3.6))
    draw_cache_bytes(ax, d_model=d_model, d_state=d_state, log2_context=log2_context)


def cache_bytes_explorer(log2_context: int = 16, d_model: int = 1024, d_state: int = 128):
    """Sliders for the context, the width D and the state size N; the picture of ``draw_cache_bytes``."""
    import ipywidgets as W

    from .widgets import _explorer, _slider

    return _explorer(_cache_bytes_figure,
                     _slider(W.IntSlider, log2_context, 4, 20, 1, "log₂ T"),
                     W.Dropdown(options=[256, 512, 1024, 2048, 4096], value=d_model, description="D"),
                     W.Dropdown(options=[16, 32, 64, 128, 256], value=d_state, description="N"))
