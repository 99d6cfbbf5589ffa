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
    DeltaNet               b · ((2HK + HV) · W · e + H K V · 4)     constant

(the SSM states are kept in float32 at least, hence the 4). ``cache_nbytes``
counts the bytes of actual cache tensors, and the tests check the two agree.

Prefill, decode and streaming are one operation, ``extend(model, tokens,
caches)``: run a chunk of tokens through the model *after* the positions the
caches already hold, with the parallel form (scan, SSD, SDPA), and leave the
caches at the end of the chunk. With fresh caches that is prefill; chunk
after chunk it is streaming; with one token it is a decoding step. Each
block owns its part (``block.extend(u, cache)``, beside ``block.step``):

* Mamba-1: the conv window carried in front of the chunk
  (``ssm_edu.mamba.conv_with_window``), then ``selective_scan_from``
  (below), then the window and state written back;
* Mamba-2: the conv window, then ``ssd(initial_states=h, return_final_states=True)``;
* Mamba-3: ``mamba3(initial_state=..., return_final_state=True)`` (no conv);
* DeltaNet: the conv window, then ``delta_rule(initial_state=S, ...)``;
* attention: SDPA over cache + chunk;
* any other block with ``step``: the step over the chunk, token by token.

``selective_scan`` (Mamba-1's API, like mamba_ssm's) returns its last state
but takes no initial one. ``selective_scan_from`` adds it by linearity: the
scan from h_{-1} is the scan from zero plus the free evolution of h_{-1},

    h_t = (Π_{r<=t} exp(Δ_r A)) ⊙ h_{-1} + h_t^(0),   y_t += <(Π_{r<=t} exp(Δ_r A)) ⊙ h_{-1}, C_t>,

the same split as the off-diagonal step of chunked SSD (chapter 8).

Decoding with a CUDA graph (``Decoder``). At batch 1 a decoding step moves
few bytes (the weights once, the states) but issues hundreds of small
operations; run eagerly, each costs a Python call and a kernel launch, and
the GPU waits for the host. A CUDA graph records the whole step once (every
layer, the sampling, the cache updates) and replays it with one launch per
token. What a graph needs, and what ``Decoder`` provides:

* static buffers: the caches (``static_caches``: KV caches of a fixed
  capacity with the position on the device), the input token, the logits
  and the sampling noise live at fixed addresses, and every block updates
  its cache in place (the block protocol);
* nothing that asks the host during the step: no ``.item()``, no shape
  that depends on a value, no random numbers drawn on the host. Sampling is
  the Gumbel-max trick (``sample_gumbel``) with noise drawn into a buffer
  before each replay, so that eager and graphed decoding draw the same
  numbers and generate the same tokens for a seed;
* a warm-up before the capture (Triton compiles its kernels, cuBLAS picks
  its algorithms: neither may happen inside a graph).

Where a graph cannot be made (no CUDA device, a block that replaces its
cache, an operation that breaks the capture), ``Decoder`` runs the same
step eagerly on the same buffers, and says why once (a warning). A capture
that fails is ended and undone first (``_capture_graph``): torch's own
``torch.cuda.graph`` would leave the capture stream current, the graph's
memory pool in use and, in torch 2.11 and earlier, the random number
generator in capture mode.

Timing (``decode_profile``, ``time_decoder``): the wall time of a decoding
step with a cache as if T tokens had been processed (``filled_caches``,
``Decoder.fill``: T random keys and values in every KV cache; the SSM states
are the same size whatever T). The numbers in a cache do not change the work
of a step, only its size does. The floor of a step (``decode_floor_bytes``)
is the bytes it must move: every weight read once, the SSM states and conv
windows read and written, the KV caches read; over the memory bandwidth it
is the least time a token can take. ``step_profile`` shows where the time
of a step goes (torch.profiler, reduced to one row per operation).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import time
import warnings
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import Shapes
from .attention import CausalSelfAttention, MLP, TransformerBlock, kv_cache_bytes
from .deltanet import DeltaNet
from .lm import extend_block
from .mamba import Mamba
from .mamba2 import Mamba2
from .mamba3_block import Mamba3
from .selective import selective_scan
from .ssd import ssd

__all__ = [
    "layer_cache_bytes",
    "model_cache_bytes",
    "cache_nbytes",
    "decode_floor_bytes",
    "selective_scan_from",
    "extend_block",
    "extend",
    "prefill",
    "generate_with_prefill",
    "static_caches",
    "sample_gumbel",
    "Decoder",
    "time_decoder",
    "decode_speed",
    "step_profile",
    "profile_table",
    "kernels_per_step",
    "memory_bandwidth",
    "filled_caches",
    "decode_profile",
    "long_context_profile",
    "matched_models",
    "MODEL_NAMES",
    "gpu_decode_rows",
    "gpu_decode_table",
    "gpu_long_context_rows",
    "draw_cache_bytes",
    "draw_decode",
    "draw_gpu_decode",
    "draw_long_context",
    "cache_bytes_explorer",
]


# ----------------------------------------------------------------------------
# Bytes of a decoding cache
# ----------------------------------------------------------------------------


def _state_size(dtype) -> int:
    """Bytes per element of an SSM state: float32 at least (float64 for a float64 model)."""
    return torch.tensor([], dtype=torch.promote_types(dtype, torch.float32)).element_size()


def _attention(block: nn.Module):
    """The attention layer of a block whose cache is a KV cache, or None."""
    block = block.attn if isinstance(block, TransformerBlock) else block
    return block if isinstance(block, CausalSelfAttention) else None


def layer_cache_bytes(block: nn.Module, context: int, batch: int = 1, dtype=torch.float32) -> int:
    """Bytes of ``block``'s decoding cache after ``context`` tokens, from the module's shapes (the table above).

    ``dtype`` is the model's (the conv window and a KV cache are stored in it;
    SSM states in float32 at least).
    """
    e = torch.tensor([], dtype=dtype).element_size()
    s = _state_size(dtype)
    attn = _attention(block)
    if attn is not None:
        return 2 * batch * attn.n_heads * attn.head_dim * context * e
    if isinstance(block, MLP):
        return 0
    if isinstance(block, Mamba):
        return batch * (block.d_inner * block.d_conv * e + block.d_inner * block.d_state * s)
    if isinstance(block, Mamba2):
        return batch * (block.conv_dim * block.d_conv * e + block.nheads * block.headdim * block.d_state * s)
    if isinstance(block, Mamba3):
        H, P, N, R = block.nheads, block.headdim, block.d_state, block.rank
        return batch * H * (P * N + N // 2 + R * N + R * P) * s  # h, Φ, previous k and x
    if isinstance(block, DeltaNet):
        return batch * (block.conv_dim * block.d_conv * e + block.state_size * s)
    raise TypeError(f"layer_cache_bytes: no formula for a {type(block).__name__} block")


def model_cache_bytes(model: nn.Module, context: int, batch: int = 1, dtype=None) -> int:
    """Sum of ``layer_cache_bytes`` over a ``SequenceModel``'s blocks (dtype: the model's by default)."""
    dtype = model.embedding.weight.dtype if dtype is None else dtype
    return sum(layer_cache_bytes(b, context, batch, dtype) for b in model.blocks)


def cache_nbytes(cache) -> int:
    """Bytes held by actual cache tensors: a block's cache, or a model's list of them.

    A KV cache counts its used part (the positions it holds), not its spare
    capacity nor, for a static cache, its position and mask.
    """
    if isinstance(cache, dict) and "k" in cache and ("length" in cache or "pos" in cache):
        return kv_cache_bytes(cache)
    if isinstance(cache, torch.Tensor):
        return cache.numel() * cache.element_size()
    if isinstance(cache, dict):
        return sum(cache_nbytes(v) for v in cache.values())
    if isinstance(cache, (list, tuple)):  # a model's caches, or a Mamba3State
        return sum(cache_nbytes(v) for v in cache)
    return 0


def decode_floor_bytes(model: nn.Module, context: int, batch: int = 1) -> int:
    """The bytes one decoding step must move, at least, after ``context`` tokens, for ``batch`` sequences.

    Every weight read once (shared by the batch; a tied embedding counted
    once), every SSM state and conv window read and written, every KV cache
    read (the one position it gains is left out). Over the memory bandwidth,
    the least time per step.
    """
    dtype = model.embedding.weight.dtype
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    caches = 0
    for block in model.blocks:
        n = layer_cache_bytes(block, context, batch, dtype)
        caches += n if _attention(block) is not None else 2 * n
    return weights + caches


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


@torch.no_grad()
def extend(model: nn.Module, idx: torch.Tensor, caches: list) -> torch.Tensor:
    """Tokens idx (b, l) after those in ``caches`` -> logits (b, l, vocab); ``caches`` move to the chunk's end.

    ``model`` is a ``ssm_edu.lm.SequenceModel`` (``model.extend``: every
    block's own ``extend``). Chunk after chunk, the logits equal
    ``model(whole sequence)``: prefill is ``extend`` on fresh caches,
    streaming is ``extend`` again and again, decoding is l = 1.
    """
    Shapes("extend").check("idx", idx, "b l")
    return model.extend(idx, caches)


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
# Decoding with static buffers, captured in a CUDA graph
# ----------------------------------------------------------------------------


def static_caches(model: nn.Module, batch: int, capacity: int) -> list:
    """One cache per block, at position -1, at addresses that never change: what a CUDA graph of the step needs.

    Blocks whose cache grows (attention) get a static cache of ``capacity``
    positions (``allocate_cache(..., capacity=, static=True)``: the position
    on the device); the SSM blocks' caches are fixed-size already. All zeros
    is the start of a sequence.
    """
    w = model.embedding.weight
    caches = []
    for block in model.blocks:
        if not hasattr(block, "step"):
            raise NotImplementedError(f"{type(block).__name__} has no step(): it cannot run as a recurrence")
        kwargs = dict(device=w.device, dtype=w.dtype)
        if "static" in inspect.signature(block.allocate_cache).parameters:
            kwargs |= dict(capacity=capacity, static=True)
        caches.append(block.allocate_cache(batch, **kwargs))
    return caches


def _leaves(cache, path=()):
    """(path, leaf) for every tensor and every other value in a cache (dicts, lists, tuples walked)."""
    if isinstance(cache, dict):
        for key in cache:
            yield from _leaves(cache[key], path + (key,))
    elif isinstance(cache, (list, tuple)):
        for i, item in enumerate(cache):
            yield from _leaves(item, path + (i,))
    else:
        yield path, cache


def _addresses(caches) -> list:
    """What a graph depends on: each tensor's address and every non-tensor value (a Python int the host updates)."""
    return [(p, x.data_ptr() if isinstance(x, torch.Tensor) else x) for p, x in _leaves(caches)]


def sample_gumbel(logits: torch.Tensor, temperature: float, top_k: int | None, noise: torch.Tensor) -> torch.Tensor:
    """Sample one token per row of logits (b, vocab) from softmax(logits / temperature), the top_k largest only.

    The Gumbel-max trick: argmax(logits / T + G) with G = -log E, E ~ Exp(1)
    i.i.d., is a sample of softmax(logits / T). ``noise`` (b, vocab) holds E,
    drawn beforehand (``noise.exponential_(generator=...)``): no random number
    and no host synchronisation here, so this runs inside a CUDA graph.
    Returns (b,) int64.
    """
    scores = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    if top_k is not None:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]  # (b, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    return (scores - torch.log(noise)).argmax(-1)


_SAID: set = set()


def _say_once(message: str) -> None:
    """Warn the first time only: one line per reason and process, not one per model or per token."""
    if message not in _SAID:
        _SAID.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


class Decoder:
    """Generation from a ``SequenceModel`` with its whole decoding step captured in a CUDA graph.

    The step (``_step``) reads the token buffer, runs every layer's ``step``
    on the static caches, writes the logits, samples, and writes the sampled
    token back into the token buffer: replayed again and again, the graph
    generates. On a CUDA device it is captured once, here; elsewhere, or if
    the capture fails, the same step runs eagerly on the same buffers and the
    reason is given once (``RuntimeWarning``) and kept in ``why_eager``.

    Args:
        model: a ``ssm_edu.lm.SequenceModel`` whose blocks all have ``step``.
        batch: sequences decoded together.
        capacity: positions a KV cache can hold (prompt and generated tokens);
            SSM blocks ignore it.
        temperature: 0 is greedy (argmax); above 0, Gumbel-max sampling.
        top_k: sample among the k most likely tokens only (None: all).
        graph: None captures where possible; True requires the capture
            (RuntimeError otherwise); False always runs eagerly.
        warmup: eager steps before the capture (compiling Triton kernels).

    Use ``generate(prompt, n_new, seed)``, or ``prefill`` then ``step``;
    ``fill(context)`` puts random caches of ``context`` tokens in place, for
    timing. ``graphed`` says whether a graph was captured; setting
    ``use_graph = False`` runs the same step eagerly on the same buffers.
    """

    def __init__(self, model: nn.Module, batch: int = 1, capacity: int = 256, temperature: float = 0.0,
                 top_k: int | None = None, graph: bool | None = None, warmup: int = 2):
        for name, v, least in (("batch", batch, 1), ("capacity", capacity, 1), ("warmup", warmup, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"Decoder: {name} must be an int >= {least}; got {v!r}")
        if not temperature >= 0:
            raise ValueError(f"Decoder: temperature must be >= 0; got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"Decoder: top_k must be None or an int >= 1; got {top_k!r}")
        if graph not in (None, True, False):
            raise ValueError(f"Decoder: graph must be None, True or False; got {graph!r}")
        self.model = model.eval()
        w = model.embedding.weight
        self.device, self.batch, self.capacity = w.device, batch, capacity
        self.temperature, self.top_k = float(temperature), top_k
        with torch.no_grad():
            self.caches = static_caches(model, batch, capacity)
        self.grows = any(_attention(b) is not None for b in model.blocks)  # a KV cache: the capacity matters
        self.token = torch.zeros(batch, dtype=torch.long, device=self.device)  # (b,) in: this token; out: the next
        self.logits = torch.zeros(batch, w.shape[0], dtype=w.dtype, device=self.device)  # (b, vocab) of the last step
        work = torch.promote_types(w.dtype, torch.float32)
        self.noise = torch.ones(batch, w.shape[0], dtype=work, device=self.device) if temperature > 0 else None
        self.gen = torch.Generator(device=self.device)
        self.position = 0  # positions the caches hold, counted on the host
        self.graph = None
        self.use_graph = True  # False: run the step eagerly even when a graph exists (same buffers; for timing)
        self.why_eager = "graph=False" if graph is False else self._capture(warmup)
        if self.why_eager and graph is True:
            raise RuntimeError(f"Decoder: no CUDA graph: {self.why_eager}")
        if self.why_eager and graph is None:
            _say_once(f"ssm_edu.inference.Decoder decodes eagerly, one launch per operation: {self.why_eager}")

    @property
    def graphed(self) -> bool:
        return self.graph is not None

    # ------------------------------------------------------------------ the step (what the graph holds)

    def _sample(self, logits):
        if self.noise is None:
            return logits.argmax(-1)
        return sample_gumbel(logits, self.temperature, self.top_k, self.noise)

    def _step(self):
        """The step on static buffers: token -> every layer -> logits -> sampled token, all in place."""
        logits = self.model.step(self.token, self.caches)  # (b, vocab)
        self.logits.copy_(logits)
        self.token.copy_(self._sample(logits))

    def _capture(self, warmup: int) -> str | None:
        """Capture ``_step`` in a CUDA graph; return None, or why it cannot be done.

        In this order: warm-up steps, eagerly, on a side stream (an eager step
        that raises is a bug, not a reason to decode eagerly: it propagates);
        the check that no block replaced a cache tensor; the capture
        (``_capture_graph``, which leaves torch as it found it when the capture
        fails); the check again. Whatever happens, the caches are reset
        afterwards, since the warm-up steps have written them.
        """
        if self.device.type != "cuda":
            if torch.cuda.is_available():
                return f"the model is on the {self.device.type.upper()} (a CUDA graph needs it on a CUDA device)"
            return "no CUDA device (a CUDA graph needs one)"
        before = _addresses(self.caches)

        def moved():
            after = _addresses(self.caches)
            for i, (a, b) in enumerate(zip(_addresses_by_layer(before, len(self.caches)),
                                           _addresses_by_layer(after, len(self.caches)))):
                if a != b:
                    return (f"layer {i} ({type(self.model.blocks[i]).__name__}) replaces its cache tensors or "
                            "keeps host-side state between steps (a graph replays fixed addresses)")
            return None

        try:
            with torch.no_grad():
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(warmup):  # compile Triton kernels, choose cuBLAS algorithms: not inside a graph
                        self._step()
                torch.cuda.current_stream(self.device).wait_stream(side)
                why = moved()
                if why:
                    return why
                graph, why = _capture_graph(self._step, side)
                if why:
                    return why
                why = moved()
                if why:
                    return why
        finally:
            self.reset()
        self.graph = graph
        return None

    # ------------------------------------------------------------------ using it

    @torch.no_grad()
    def reset(self) -> None:
        """Every cache back to position -1 (all zeros), in place."""
        for _, x in _leaves(self.caches):
            if isinstance(x, torch.Tensor):
                x.zero_()
        self.token.zero_()
        self.position = 0

    def _room(self, n: int) -> None:
        if self.grows and n > self.capacity:
            raise ValueError(f"Decoder: the KV caches hold {self.capacity} positions; {n} were asked for "
                             "(make the Decoder with a larger capacity)")

    def _draw(self) -> None:
        if self.noise is not None:
            self.noise.exponential_(generator=self.gen)

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """The prompt (batch, T) through the parallel forms (``model.extend``); returns the first new token (batch,).

        ``seed`` restarts the sampling noise, so that a seed gives the same
        tokens, graphed or not.
        """
        Shapes("Decoder.prefill").check("prompt", prompt, f"{self.batch} T")
        self._room(prompt.shape[1])
        self.reset()
        if seed is not None:
            self.gen.manual_seed(seed)
        logits = self.model.extend(prompt.to(self.device), self.caches)[:, -1]  # (b, vocab)
        self.position = prompt.shape[1]
        self._draw()
        self.logits.copy_(logits)
        self.token.copy_(self._sample(logits))
        return self.token

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Feed the token buffer, sample the next token into it (one graph replay); returns the buffer (batch,)."""
        self._room(self.position + 1)
        self._draw()
        if self.graph is not None and self.use_graph:
            self.graph.replay()
        else:
            self._step()
        self.position += 1
        return self.token

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, n_new: int, seed: int | None = None) -> torch.Tensor:
        """Continue ``prompt`` (batch, T) by ``n_new`` tokens: (batch, T + n_new) int64."""
        if isinstance(n_new, bool) or not isinstance(n_new, int) or n_new < 0:
            raise ValueError(f"Decoder.generate: n_new must be an int >= 0; got {n_new!r}")
        if n_new == 0:
            return prompt.to(self.device)
        self._room(prompt.shape[1] + n_new - 1)
        tokens = [self.prefill(prompt, seed).clone()]
        for _ in range(n_new - 1):
            tokens.append(self.step().clone())
        return torch.cat([prompt.to(self.device), torch.stack(tokens, 1)], dim=1)

    @torch.no_grad()
    def fill(self, context: int, seed: int = 0) -> None:
        """Caches as if ``context`` tokens had been processed, with random numbers (for timing)."""
        self._room(context)
        self.reset()
        _fill_random(self.caches, context, torch.Generator(self.device).manual_seed(seed))
        self.position = context


_FAILED_CAPTURES: list = []  # graphs whose capture failed, never destroyed (see _capture_graph)


def _reason(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0][:240]
    return f"{type(err).__name__}: {first}"


@contextlib.contextmanager
def _host_syncs_raise():
    """Make an operation that waits for the GPU (``.item()``, ``nonzero``, a blocking copy) raise before it
    reaches CUDA: inside a capture it would otherwise invalidate the capture, and torch with it."""
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)


def _capture_graph(fn, stream: torch.cuda.Stream) -> tuple:
    """Capture ``fn()`` on ``stream`` in a new CUDA graph: (graph, None), or (None, why not).

    ``torch.cuda.graph`` (the context manager) does the same, but when the
    captured code fails it leaves torch in a state that breaks what comes
    after. The code raises inside the capture (a host synchronisation is
    made to raise before it reaches CUDA, ``_host_syncs_raise``; other
    errors, a CUDA call that invalidates the capture, raise where they
    happen); then ``capture_end`` raises too if CUDA invalidated the
    capture, and torch stops halfway: the context manager's stream is never
    restored (later work would run on the capture stream), the caching
    allocator keeps routing allocations to the graph's memory pool, and in
    torch 2.11 and earlier (2.13 keeps a generator's capture state per
    capture) the default CUDA generator stays in capture mode: every later
    random number on the device raises "Offset increment outside graph
    capture encountered unexpectedly". Here the capture is always ended,
    on our own stream context; if ending it failed, the pool is ended and
    released and the generator's state replaced by a copy of itself (same
    seed and offset, out of capture mode), and the device synchronised: the
    eager steps that follow run as if no capture had been tried.
    """
    device = stream.device
    graph, pool = torch.cuda.CUDAGraph(), torch.cuda.graph_pool_handle()
    torch.cuda.synchronize(device)  # as torch.cuda.graph: nothing pending, the cached memory free for the graph
    torch.cuda.empty_cache()
    why, began, ended = None, False, False
    with torch.cuda.stream(stream):
        try:
            graph.capture_begin(pool=pool)
            began = True
            with _host_syncs_raise():
                fn()
        except Exception as err:  # noqa: BLE001 (anything that breaks the capture: say what, decode eagerly)
            why = _reason(err)
        finally:
            if began or torch.cuda.is_current_stream_capturing():
                try:
                    graph.capture_end()  # an invalidated capture must be ended too
                    ended = True
                except Exception as err:  # noqa: BLE001
                    why = why or _reason(err)
    if why is None:
        return graph, None
    if not ended:
        _undo_failed_capture(graph, pool, device)
    torch.cuda.synchronize(device)
    return None, f"capture failed with {why}"


def _undo_failed_capture(graph, pool, device: torch.device) -> None:
    """What torch leaves behind when a capture fails before ``capture_end`` has finished (see _capture_graph)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    end = getattr(torch._C, "_cuda_endAllocateToPool", None)
    ended_by_torch = False
    if end is not None:
        try:
            end(index, pool)  # the allocator stops routing the capture stream's allocations to the pool
        except RuntimeError:  # "not currently recording to mempool_id": capture_end got that far itself
            ended_by_torch = True
        else:  # capture_end stopped before it: the graph will never release its pool, so release it here
            torch._C._cuda_releasePool(index, pool)
    if not ended_by_torch:  # allocators may still hold callbacks that point at the graph: it must outlive them
        _FAILED_CAPTURES.append(graph)
    gen = torch.cuda.default_generators[index]
    state = gen.get_state()
    if not _draws(device):
        gen.graphsafe_set_state(gen.clone_state())  # a fresh state object: same seed and offset, not capturing
    gen.set_state(state)  # the probe's draw undone: the generator's stream is as before the capture


def _draws(device: torch.device) -> bool:
    """Whether the device's default generator can draw a random number (a failed capture can leave it unable)."""
    try:
        torch.empty(4, device=device).uniform_()
        return True
    except RuntimeError:
        return False


def _addresses_by_layer(addresses: list, n_layers: int) -> list:
    """Split ``_addresses(caches)`` by layer (the first element of each path)."""
    out = [[] for _ in range(n_layers)]
    for path, a in addresses:
        out[path[0]].append((path, a))
    return out


def _fill_random(caches: list, context: int, gen: torch.Generator | None = None) -> None:
    """Caches as if ``context`` tokens had been processed: random keys and values in ``context`` positions of
    every KV cache (static or growing), random SSM states and conv windows (their size does not depend on it)."""
    for cache in caches:
        if isinstance(cache, dict) and "k" in cache and ("length" in cache or "pos" in cache):
            if context > cache["k"].shape[2]:
                raise ValueError(f"filled caches: a KV cache of capacity {cache['k'].shape[2]} cannot hold {context}")
            cache["k"][:, :, :context].normal_(generator=gen)
            cache["v"][:, :, :context].normal_(generator=gen)
            if "pos" in cache:
                cache["seen"][:context] = True
                cache["pos"].fill_(context)
            else:
                cache["length"] = context
            continue
        for _, x in _leaves(cache):
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                x.normal_(generator=gen).mul_(0.1)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_decoder(decoder: Decoder, context: int = 0, n_tokens: int = 16, repeats: int = 3, warmup: int = 2) -> float:
    """Seconds per token of ``decoder.step()`` after ``context`` tokens: the median of ``repeats`` runs.

    Each run starts from random caches of ``context`` tokens (``fill``), takes
    ``warmup`` steps, then times ``n_tokens`` steps back to back, as
    generation runs them (on a GPU with CUDA events, so the time includes the
    GPU waiting for the host). The decoder needs a capacity of at least
    context + warmup + n_tokens.
    """
    runs = []
    for _ in range(repeats):
        decoder.fill(context)
        for _ in range(warmup):
            decoder.step()
        if decoder.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(decoder.device)
            start.record()
            for _ in range(n_tokens):
                decoder.step()
            end.record()
            end.synchronize()
            runs.append(start.elapsed_time(end) * 1e-3 / n_tokens)
        else:
            t0 = time.perf_counter()
            for _ in range(n_tokens):
                decoder.step()
            runs.append((time.perf_counter() - t0) / n_tokens)
    return sorted(runs)[len(runs) // 2]


def decode_speed(models: dict, batch: int = 1, context: int = 0, n_tokens: int = 16, repeats: int = 3,
                 graph: Iterable[bool] = (False, True)) -> list[dict]:
    """Time per token of every model, eagerly and (where a graph can be made) graphed.

    ``models``: name -> ``SequenceModel``. Returns rows {"model", "mode"
    ("eager" | "graph"), "s_per_token", "tokens_per_s" (batch / s_per_token),
    "floor_bytes" (``decode_floor_bytes``), "why_eager"}; a graph that
    cannot be made gives a row with ``s_per_token`` None and the reason.
    """
    rows = []
    capacity = context + n_tokens + 4
    for name, model in models.items():
        for g in graph:
            dec = Decoder(model, batch=batch, capacity=capacity, graph=None if g else False)
            row = {"model": name, "mode": "graph" if g else "eager", "batch": batch, "context": context,
                   "floor_bytes": decode_floor_bytes(model, context, batch), "why_eager": None}
            if g and not dec.graphed:
                rows.append(row | {"s_per_token": None, "tokens_per_s": None, "why_eager": dec.why_eager})
                continue
            s = time_decoder(dec, context, n_tokens=n_tokens, repeats=repeats)
            rows.append(row | {"s_per_token": s, "tokens_per_s": batch / s})
    return rows


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 for a while: the profiler's C++ side logs its stages there, which a notebook
    would show (and the book build treat) as an error stream."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


@torch.no_grad()
def step_profile(decoder: Decoder, context: int = 0, steps: int = 8, top: int = 8) -> dict:
    """Where the time of ``decoder.step()`` goes: torch.profiler over ``steps`` steps, one row per operation.

    Returns {"rows": [{"op", "calls", "host_us", "device_us"}] (per step:
    the ``top`` operations by host time, then "other operations" and
    "outside any operation"), "wall_us" (a step, timed without the
    profiler), "ops" (operations the step issues: ATen calls not made by
    another ATen call), "kernels" (GPU kernels per step; None on a CPU),
    "device_us" (GPU busy time per step; None on a CPU)}. An operation's host
    time is its own (self) CPU time, its median call times its calls per
    step (robust to the odd call the operating system interrupts); "outside
    any operation" is the rest of the step's wall time: Python, module calls,
    and dispatch between operations.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    gpu = decoder.device.type == "cuda"
    wall = time_decoder(decoder, context, n_tokens=steps, repeats=3)
    decoder.fill(context)
    decoder.step()
    _sync(decoder.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with _quiet_stderr():
        with profile(activities=activities) as prof:
            for _ in range(steps):
                decoder.step()
            _sync(decoder.device)
        events = prof.events()
    calls, n_top, kernels, busy = {}, 0, 0, 0.0
    for e in events:
        if e.device_type == DeviceType.CPU and e.name.startswith("aten::"):
            calls.setdefault(e.name, []).append((e.self_cpu_time_total, e.self_device_time_total if gpu else 0.0))
            n_top += e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")
        elif e.device_type != DeviceType.CPU:
            kernels += 1
            busy += e.device_time_total

    def median(xs):
        return sorted(xs)[len(xs) // 2]

    rows = sorted(({"op": name, "calls": len(c) / steps, "host_us": len(c) / steps * median([h for h, _ in c]),
                    "device_us": sum(d for _, d in c) / steps} for name, c in calls.items()),
                  key=lambda r: -r["host_us"])
    head, rest = rows[:top], rows[top:]
    other = {"op": f"other operations ({len(rest)} kinds)", "calls": sum(r["calls"] for r in rest),
             "host_us": sum(r["host_us"] for r in rest), "device_us": sum(r["device_us"] for r in rest)}
    in_ops = sum(r["host_us"] for r in rows)
    outside = {"op": "outside any operation", "calls": 0, "host_us": max(0.0, 1e6 * wall - in_ops),
               "device_us": max(0.0, busy / steps - sum(r["device_us"] for r in rows)) if gpu else 0.0}
    return {"rows": head + ([other] if rest else []) + [outside], "wall_us": 1e6 * wall, "ops": n_top / steps,
            "kernels": kernels / steps if gpu else None, "device_us": busy / steps if gpu else None}


def profile_table(prof: dict) -> str:
    """``step_profile``'s result as a text table: one line per operation, per step, with its share of the step."""
    gpu = prof["device_us"] is not None
    head = f"{'operation':34s} {'calls':>6s} {'host µs':>9s} {'share':>6s}" + (f" {'GPU µs':>8s}" if gpu else "")
    lines = [head, "-" * len(head)]
    for r in prof["rows"]:
        share = r["host_us"] / prof["wall_us"] if prof["wall_us"] else 0.0
        line = f"{r['op'][:34]:34s} {r['calls']:6.0f} {r['host_us']:9.1f} {100 * share:5.0f}%"
        lines.append(line + (f" {r['device_us']:8.1f}" if gpu else ""))
    lines.append("-" * len(head))
    summary = f"one step: {prof['wall_us']:,.0f} µs, {prof['ops']:.0f} operations"
    if gpu:
        summary += f", {prof['kernels']:.0f} GPU kernels, GPU busy {prof['device_us']:,.0f} µs"
    return "\n".join(lines + [summary])


def kernels_per_step(decoder: Decoder) -> float | None:
    """GPU kernels (and copies) one ``decoder.step()`` launches, from torch.profiler; None on a CPU."""
    if decoder.device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    decoder.step()
    torch.cuda.synchronize(decoder.device)
    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                decoder.step()
            torch.cuda.synchronize(decoder.device)
        events = prof.events()
    return sum(e.device_type != DeviceType.CPU for e in events) / 2


def memory_bandwidth(device=None, n_bytes: int | None = None) -> float:
    """Bytes per second of a large copy on ``device`` (read plus written): the bandwidth a floor divides by.

    64 MiB on a CPU (beyond its caches), 1 GiB on a GPU; the median of a few copies.
    """
    from .timing import median_time

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    n_bytes = n_bytes or (2**30 if device.type == "cuda" else 2**26)
    src = torch.ones(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * n_bytes / median_time(lambda: dst.copy_(src), repeats=5, warmup=1)


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
        if _attention(block) is not None:
            caches.append(block.allocate_cache(batch, device=w.device, dtype=w.dtype, capacity=context + room))
        else:
            caches.append(block.allocate_cache(batch, device=w.device, dtype=w.dtype))
    _fill_random(caches, context, torch.Generator(w.device).manual_seed(0))
    return caches


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



MODEL_NAMES = ("Transformer", "Mamba-1", "Mamba-2", "Mamba-3", "DeltaNet", "Hybrid")


def matched_models(vocab_size: int, d_model: int, n_layers: int, which=("Transformer", "Mamba-1", "Mamba-2", "Mamba-3"),
                   n_heads: int | None = None, device=None, dtype=None, seed: int = 0, **block_kwargs) -> dict:
    """Models of about the same size: a Transformer of ``n_layers`` and the others of ``2 * n_layers``.

    A parallel Transformer layer (attention 4D², MLP 8D²) holds about 12 D²
    parameters; a Mamba layer with expand 2 about 6 D² (Gu & Dao 2023 match
    sizes the same way). Heads of 64 (or D / 4 when D < 256); Mamba-2/3 heads
    of 64 channels (or D / 2, whichever is smaller) and N = 64; Mamba-1 N = 16.
    ``which`` names any of ``MODEL_NAMES``: also "DeltaNet" (Gated DeltaNet,
    keys of 3D/4 and values of 3D/2 in heads of K = min(64, D/4) and V = 2K:
    about 6 D² a layer) and "Hybrid" (Mamba-2 layers with one attention layer
    in eight, Jamba's pattern; one in two for a model of two layers).
    ``block_kwargs`` (e.g. ``impl``) go to the Mamba-2/3 blocks (and
    ``impl`` to DeltaNet).
    """
    from .attention import attention_block, transformer_block
    from .deltanet import deltanet_block
    from .hybrid import hybrid_block, layer_pattern
    from .lm import SequenceModel
    from .mamba import mamba_block
    from .mamba2 import mamba2_block
    from .mamba3_block import mamba3_block

    unknown = [n for n in which if n not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"matched_models: unknown model(s) {unknown}; choose from {MODEL_NAMES}")
    n_heads = n_heads or max(1, d_model // 64 if d_model >= 256 else 4)
    headdim = min(64, d_model // 2)
    head_k = min(64, max(1, d_model // 4))
    delta_kw = {k: v for k, v in block_kwargs.items() if k == "impl"}
    factories = {
        "Transformer": lambda: transformer_block(n_heads=n_heads),
        "Mamba-1": lambda: mamba_block(d_state=16),
        "Mamba-2": lambda: mamba2_block(d_state=64, headdim=headdim, **block_kwargs),
        "Mamba-3": lambda: mamba3_block(d_state=64, headdim=headdim, **block_kwargs),
        "DeltaNet": lambda: deltanet_block(n_heads=max(1, 3 * d_model // (4 * head_k)), head_k_dim=head_k,
                                           head_v_dim=2 * head_k, **delta_kw),
        "Hybrid": lambda: hybrid_block(layer_pattern(2 * n_layers, attention_every=min(8, 2 * n_layers)),
                                       M=mamba2_block(d_state=64, headdim=headdim, **block_kwargs),
                                       A=attention_block(n_heads=n_heads)),
    }
    out = {}
    for name in which:
        torch.manual_seed(seed)
        layers = n_layers if name == "Transformer" else 2 * n_layers
        model = SequenceModel(vocab_size, d_model, layers, factories[name]())
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

_MODEL_KEYS = {"transformer": "Transformer", "mamba1": "Mamba-1", "mamba2": "Mamba-2", "mamba3": "Mamba-3",
               "deltanet": "DeltaNet", "hybrid": "Hybrid"}


def gpu_decode_rows(include_missing: bool = False, include_fused: bool = False) -> list[dict]:
    """The stored "decode" rows (``benchmarks/decode.py``), one dict per measured step.

    Each: "model" (as ``MODEL_NAMES``), "mode" ("eager" or "graph"), "peer"
    (None, or the library whose state update ran inside our model), "fused"
    (the blocks' fused decoding step, ``fused_step``; those rows only with
    ``include_fused``), "batch",
    "context", "d_model", "layers", "s_per_token", "tokens_per_s" (batch /
    s_per_token), "floor_s" (``decode_floor_bytes`` over the measured
    bandwidth), "peak_bytes", "cache_bytes", and the run's "device", "dtype",
    "date", "torch", "triton". ``include_missing`` adds the rows that could not
    be measured, with "missing" (why) and no time. Empty when this copy of the
    book holds no GPU measurements of decoding.
    """
    import re

    from .results import rows

    out = []
    for r in rows("decode"):
        m = re.fullmatch(r"B(\d+) ctx(\d+) d(\d+) layers(\d+)", r["shape"])
        parts = r["impl"].split("-", 2)
        if not m or parts[0] not in _MODEL_KEYS or len(parts) < 2 or (not r.get("median_us") and not include_missing):
            continue
        fused = len(parts) > 2 and parts[2] == "fused"
        if fused and not include_fused:
            continue
        s = 1e-6 * r["median_us"] if r.get("median_us") else None
        batch = int(m.group(1))
        out.append({"model": _MODEL_KEYS[parts[0]], "mode": parts[1], "fused": fused,
                    "peer": parts[2] if len(parts) > 2 and not fused else None,
                    "batch": batch, "context": int(m.group(2)), "d_model": int(m.group(3)),
                    "layers": int(m.group(4)), "s_per_token": s, "tokens_per_s": batch / s if s else None,
                    "floor_s": 1e-6 * r["floor_us"] if r.get("floor_us") else None,
                    "peak_bytes": (r.get("peak_mib") or 0) * 2**20, "cache_bytes": (r.get("cache_mib") or 0) * 2**20,
                    "kernels": r.get("kernels_per_step"), "matches_eager": r.get("matches_eager"),
                    "peer_rel_error": r.get("peer_rel_error"), "missing": r.get("missing"), "device": r["device"],
                    "dtype": r["dtype"], **{k: r.get(k) for k in ("date", "torch", "triton")}})
    return out


def gpu_decode_table(rows: list[dict], context: int = 1024) -> str:
    """``gpu_decode_rows`` at one context as a text table: per model and batch, tokens per second eager and
    graphed, the graph's speed-up, the floor's tokens per second and how far the graphed step is above it, and
    (batch 1) the kernels a step launches and the graphed time per kernel. Peers on lines of their own."""
    rs = [r for r in rows if r["context"] == context and r.get("s_per_token")]
    fmt = "{:26s} {:>5s} {:>9s} {:>9s} {:>8s} {:>9s} {:>9s} {:>8s} {:>9s}"
    lines = [fmt.format("model", "batch", "eager", "graph", "speed-up", "floor", "graph /", "kernels", "µs per"),
             fmt.format("", "", "tok/s", "tok/s", "", "tok/s", "floor", "per step", "kernel")]
    order = {n: i for i, n in enumerate(MODEL_NAMES)}
    for name, batch in sorted({(r["model"], r["batch"]) for r in rs}, key=lambda k: (k[1], order.get(k[0], 99))):
        mine = {(r["mode"], r["peer"]): r for r in rs if r["model"] == name and r["batch"] == batch
                and not r.get("fused")}
        eager, graph = mine.get(("eager", None)), mine.get(("graph", None))
        kernels = eager.get("kernels") if eager else None
        ref = graph or eager
        cells = [f"{eager['tokens_per_s']:,.0f}" if eager else "-", f"{graph['tokens_per_s']:,.0f}" if graph else "-",
                 f"{eager['s_per_token'] / graph['s_per_token']:.1f}x" if eager and graph else "-",
                 f"{batch / ref['floor_s']:,.0f}" if ref and ref["floor_s"] else "-",
                 f"{graph['s_per_token'] / graph['floor_s']:.1f}x" if graph and graph["floor_s"] else "-",
                 f"{kernels:,.0f}" if kernels else "-",
                 f"{1e6 * graph['s_per_token'] / kernels:.1f}" if kernels and graph else "-"]
        lines.append(fmt.format(name, str(batch), *cells))
        for (mode, peer), r in mine.items():
            if peer:
                lines.append(fmt.format(f"  {peer}'s state update"[:26], str(batch), "", f"{r['tokens_per_s']:,.0f}",
                                        "", "", f"{r['s_per_token'] / r['floor_s']:.1f}x" if r["floor_s"] else "-",
                                        "", ""))
        fused = {r["mode"]: r for r in rs if r["model"] == name and r["batch"] == batch and r.get("fused")}
        if fused:  # the blocks' fused decoding step (rows present with include_fused)
            fe, fg = fused.get("eager"), fused.get("graph")
            fk = fe.get("kernels") if fe else None
            lines.append(fmt.format(
                "  fused step", str(batch), f"{fe['tokens_per_s']:,.0f}" if fe else "-",
                f"{fg['tokens_per_s']:,.0f}" if fg else "-",
                f"{fe['s_per_token'] / fg['s_per_token']:.1f}x" if fe and fg else "-", "",
                f"{fg['s_per_token'] / fg['floor_s']:.1f}x" if fg and fg["floor_s"] else "-",
                f"{fk:,.0f}" if fk else "-", f"{1e6 * fg['s_per_token'] / fk:.1f}" if fk and fg else "-"))
    return "\n".join(lines)


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


def draw_gpu_decode(rows: list[dict], ax, batch: int = 1, legend: bool = True):
    """Time per step against the context from ``gpu_decode_rows``: each model eager (dashed) and graphed (solid).

    Models measured at one context only (the SSMs, whose step does not depend
    on it) are drawn flat across the contexts of the others, with a marker
    where they were measured; the black lines are the floors
    (``decode_floor_bytes`` over the measured bandwidth) of the Transformer
    (dotted) and of Mamba-2 (dash-dotted).
    """
    from .plots import PALETTE

    rs = [r for r in rows if r["batch"] == batch and r.get("s_per_token") and not r.get("peer")]
    span = sorted({r["context"] for r in rs})

    def line(pts, style, **kw):
        if len(pts) == 1 and len(span) > 1:
            ax.loglog([span[0], span[-1]], [pts[0][1]] * 2, style, **kw)
            ax.loglog(*zip(*pts), "o", ms=3, color=kw.get("color", "k"))
        elif pts:
            ax.loglog(*zip(*pts), style, marker="o", ms=3, **kw)

    for i, name in enumerate(dict.fromkeys(r["model"] for r in rs)):
        for mode, style in (("eager", "--"), ("graph", "-")):
            pts = sorted((r["context"], 1e3 * r["s_per_token"]) for r in rs if r["model"] == name and r["mode"] == mode)
            line(pts, style, color=PALETTE[i % len(PALETTE)], label=f"{name}, {mode}")
    for name, style in (("Transformer", ":"), ("Mamba-2", "-.")):
        pts = sorted((r["context"], 1e3 * r["floor_s"]) for r in rs if r["model"] == name and r["mode"] == "graph")
        line(pts, style, color="k", lw=1, label=f"{name}: floor")
    ax.set_xlabel("context T [tokens]")
    ax.set_ylabel("time per step [ms]")
    ax.set_title(f"decoding, batch {batch}")
    if legend:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return ax


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
