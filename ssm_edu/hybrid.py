"""Hybrid models: attention layers interleaved with SSM layers (chapter 11).

Symbols -> code:  n_layers -> n_layers,  "one attention layer every k" -> attention_every (k),
its position inside each group of k layers -> offset.  A layer pattern is a
string with one letter per layer, e.g. "MMMMAMMM": each letter names a block
factory (by convention M Mamba-2, D DeltaNet, A attention).

    layer_pattern(8, attention_every=8)            -> "MMMMAMMM"  (Jamba: 1 in 8, offset 4)
    layer_pattern(4, attention_every=2)            -> "MAMA"
    hybrid_model(vocab, d, "MA", M=mamba2_block(), A=attention_block())
                                                   -> SequenceModel: layer 0 Mamba-2, layer 1 attention

Jamba (Lieber et al. 2024) puts one attention layer in every eight, at
position 4 of each group (its ``attn_layer_period`` and ``attn_layer_offset``);
the rest are Mamba layers. The attention layers keep a KV cache that grows
with the context; the SSM layers keep a fixed-size state. ``cache_numbers``
counts both, per layer, for a given context length: what a hybrid saves
over a Transformer is the SSM layers' share.

The factories are ``ssm_edu.lm`` block factories (``block(d_model) -> module``);
``hybrid_block`` builds on ``ssm_edu.attention.alternate``, which cycles
through factories in order, so a pattern is laid out exactly once by a model
of ``len(pattern)`` layers. Every layer follows the block protocol, so a
hybrid generates through ``step`` like any other model (the attention layers'
caches grow, the SSM layers' do not).
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from .attention import CausalSelfAttention, TransformerBlock, alternate
from .lm import SequenceModel

__all__ = ["layer_pattern", "hybrid_block", "hybrid_model", "cache_numbers"]


def layer_pattern(n_layers: int, attention_every: int | None, offset: int | None = None, ssm: str = "M",
                  attention: str = "A") -> str:
    """One letter per layer: ``attention`` where i % attention_every == offset, else ``ssm``.

    ``attention_every=None`` (or 0) gives a pure SSM; 1 a pure attention model.
    ``offset`` defaults to attention_every // 2 (Jamba's 4 of 8: the attention
    layer sits in the middle of its group, with SSM layers before it).
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"layer_pattern: n_layers must be an int >= 1; got {n_layers!r}")
    if not attention_every:
        return ssm * n_layers
    if isinstance(attention_every, bool) or not isinstance(attention_every, int) or attention_every < 1:
        raise ValueError(f"layer_pattern: attention_every must be None or an int >= 1; got {attention_every!r}")
    offset = attention_every // 2 if offset is None else offset
    if not 0 <= offset < attention_every:
        raise ValueError(f"layer_pattern: offset must be in 0 .. attention_every - 1 = {attention_every - 1}; "
                         f"got {offset!r}")
    return "".join(attention if i % attention_every == offset else ssm for i in range(n_layers))


def hybrid_block(pattern: str, **factories: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    """A block factory laying out ``pattern``: layer i is ``factories[pattern[i]](d_model)``.

    Use it with ``SequenceModel(..., n_layers=len(pattern), block=...)`` (or
    ``hybrid_model``), one factory per model: like ``alternate``, it counts the
    layers it has made.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"hybrid_block: pattern must be a non-empty string of layer letters; got {pattern!r}")
    unknown = sorted(set(pattern) - set(factories))
    if unknown:
        raise ValueError(f"hybrid_block: no block factory for letter(s) {unknown} of pattern {pattern!r}; "
                         f"given: {sorted(factories)}")
    return alternate(*(factories[c] for c in pattern))


def hybrid_model(vocab_size: int, d_model: int, pattern: str, **factories: Callable[[int], nn.Module]) -> SequenceModel:
    """``SequenceModel`` with one layer per letter of ``pattern`` (see ``hybrid_block``)."""
    return SequenceModel(vocab_size, d_model, len(pattern), hybrid_block(pattern, **factories))


def cache_numbers(model: SequenceModel, length: int) -> list[int]:
    """Numbers each layer keeps to decode one sequence after ``length`` tokens.

    An attention layer keeps every key and value: 2·H·P·length. Any other
    block keeps what its ``allocate_cache`` holds, whatever the length (for
    Mamba-2: the H·P·N states and the conv window; for DeltaNet the H·K·V
    states and the conv window). Returns one count per layer.
    """
    counts = []
    for block in model.blocks:
        attn = block.attn if isinstance(block, TransformerBlock) else block
        if isinstance(attn, CausalSelfAttention):
            counts.append(2 * attn.n_heads * attn.head_dim * length)
        elif not hasattr(block, "allocate_cache"):
            raise ValueError(f"cache_numbers: {type(block).__name__} has no decoding cache (no allocate_cache)")
        else:
            counts.append(_numbers(block.allocate_cache(1)))
    return counts


def _numbers(cache) -> int:
    """Numbers held by the tensors of a cache: dicts, lists and tuples (a Mamba3State) walked."""
    if isinstance(cache, dict):
        return sum(_numbers(v) for v in cache.values())
    if isinstance(cache, (list, tuple)):
        return sum(_numbers(v) for v in cache)
    return cache.numel() if hasattr(cache, "numel") else 0
