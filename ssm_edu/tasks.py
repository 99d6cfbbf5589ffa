"""Data for the sequence models of Part III: synthetic tasks and a character corpus.

Every task here is a function

    task(n, *, vocab, gen, ...settings) -> (x, y)

    x  (n, L) int64   the input tokens, all in 0 .. vocab - 1
    y  (n, L) int64   the target at each position, or IGNORE_INDEX (-100)
                      where the model is not asked anything

so that one loss (cross-entropy with ``ignore_index=IGNORE_INDEX``), one
accuracy ("argmax at the answer positions", ``ssm_edu.lm.evaluate``) and one
training loop serve all of them, and a model for a task needs only
``vocab``. ``gen`` is a ``torch.Generator`` or an int seed: the data are
generated, never downloaded, and the same seed gives the same batch.
``TASKS`` maps names to the functions; later chapters add theirs
(parity and modular counting for state tracking, MQAR for recall) with the
same signature.

* ``selective_copying`` (Gu & Dao 2023, §4.1; the S4 repository's
  ``copying.py``): M data tokens scattered at random positions among noise
  tokens, then M markers; at the markers, output the data tokens in order.
  Which tokens matter depends on their content, not their position, so no
  fixed (LTI) convolution can pick them out.
* ``induction_heads`` (Olsson et al. 2022; the safari repository's
  ``synthetics.py``): a random sequence in which a special token appears once,
  followed by some token; the sequence ends with the special token again, and
  the answer is the token that followed it the first time.

``char_corpus`` is a character-level language-modelling corpus built from
the documentation topics that ship with Python (``pydoc_data.topics``,
~465k characters), split by document into train and validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "selective_copying",
    "induction_heads",
    "task_batches",
    "answer_mask",
    "CharCorpus",
    "char_corpus",
]

#: Target value at positions that carry no question (PyTorch's cross-entropy default).
IGNORE_INDEX = -100


def _generator(gen) -> torch.Generator:
    """A torch.Generator from a generator or an int seed."""
    if isinstance(gen, torch.Generator):
        return gen
    if isinstance(gen, bool) or not isinstance(gen, int):
        raise ValueError(f"gen must be a torch.Generator or an int seed; got {gen!r}")
    return torch.Generator().manual_seed(gen)


def _check_int(op: str, name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{op}: {name} must be an int >= {low}; got {value!r}")


def answer_mask(y: torch.Tensor) -> torch.Tensor:
    """(n, L) bool: the positions that carry an answer (y != IGNORE_INDEX)."""
    return y != IGNORE_INDEX


# ----------------------------------------------------------------------------
# Synthetic tasks
# ----------------------------------------------------------------------------


def selective_copying(n: int, *, L: int = 64, M: int = 4, vocab: int = 8, gen=0):
    """The selective copying task: remember M tokens scattered among noise.

    Tokens: 0 is noise, 1 .. vocab - 2 are data, vocab - 1 is the marker.
    Each sequence is L + M positions of noise with M data tokens at sorted
    random positions, then M markers (length L + 2M in all). At the j-th
    marker the target is the j-th data token; every other target is
    IGNORE_INDEX.

        x:  0 3 0 0 5 0 2 0 | 7 7 7         (L = 5, M = 3, vocab = 8)
        y:  . . . . . . . . | 3 5 2         (. = IGNORE_INDEX)

    Returns x, y (n, L + 2M) int64.
    """
    op = "selective_copying"
    _check_int(op, "n", n, 1)
    _check_int(op, "L", L, 0)
    _check_int(op, "M", M, 1)
    _check_int(op, "vocab", vocab, 3)
    g = _generator(gen)
    tokens = torch.randint(1, vocab - 1, (n, M), generator=g)  # (n, M) data tokens
    # M distinct sorted positions among L + M: argsort of uniform noise is a random permutation
    where = torch.rand(n, L + M, generator=g).argsort(dim=-1)[:, :M].sort(dim=-1).values  # (n, M)
    body = torch.zeros(n, L + M, dtype=torch.long).scatter_(1, where, tokens)  # (n, L + M)
    x = torch.cat([body, torch.full((n, M), vocab - 1, dtype=torch.long)], dim=1)  # (n, L + 2M)
    y = torch.full_like(x, IGNORE_INDEX)
    y[:, L + M:] = tokens
    return x, y


def induction_heads(n: int, *, L: int = 64, vocab: int = 16, gen=0):
    """The induction-heads task: after the trigger, say what followed it before.

    Tokens: 0 .. vocab - 2 are ordinary, vocab - 1 is the trigger (the "copy
    prefix"). Each sequence holds L - 1 random ordinary tokens with the
    trigger at one random position p in 0 .. L - 3 (so that a token follows
    it), and a final trigger at position L - 1. The target at L - 1 is x[p + 1];
    every other target is IGNORE_INDEX.

        x:  4 9 1 T 6 2 0 3 T        (vocab = 11, T = 10, L = 9)
        y:  . . . . . . . . 6

    Returns x, y (n, L) int64.
    """
    op = "induction_heads"
    _check_int(op, "n", n, 1)
    _check_int(op, "L", L, 3)
    _check_int(op, "vocab", vocab, 3)
    g = _generator(gen)
    trigger = vocab - 1
    x = torch.randint(0, vocab - 1, (n, L), generator=g)  # (n, L) ordinary tokens
    p = torch.randint(0, L - 2, (n,), generator=g)  # (n,) first trigger, followed by a token
    rows = torch.arange(n)
    x[rows, p] = trigger
    x[:, -1] = trigger
    y = torch.full_like(x, IGNORE_INDEX)
    y[:, -1] = x[rows, p + 1]
    return x, y


TASKS = {
    "selective_copying": selective_copying,
    "induction_heads": induction_heads,
}


def task_batches(task, batch_size: int, *, seed: int = 0, device=None, **settings):
    """An endless supply of fresh training batches: ``get_batch() -> (x, y)``.

    ``task`` is a function of ``TASKS`` (or its name); ``settings`` are its
    keyword arguments (``L``, ``vocab``, ...). One generator seeded with
    ``seed`` draws every batch, so a run is reproducible and no batch repeats.
    """
    fn = TASKS[task] if isinstance(task, str) else task
    g = torch.Generator().manual_seed(seed)

    def get_batch():
        x, y = fn(batch_size, gen=g, **settings)
        return (x, y) if device is None else (x.to(device), y.to(device))

    return get_batch


# ----------------------------------------------------------------------------
# A character corpus that ships with Python
# ----------------------------------------------------------------------------


@dataclass
class CharCorpus:
    """Characters as tokens: a vocabulary and the encoded train / validation text.

    ``chars`` is the sorted vocabulary (token i is ``chars[i]``); ``train`` and
    ``val`` are int64 token sequences (n_chars,).
    """

    chars: str
    train: torch.Tensor
    val: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """str -> (len(text),) int64. Characters outside the vocabulary raise ValueError."""
        index = {c: i for i, c in enumerate(self.chars)}
        missing = sorted(set(text) - set(index))
        if missing:
            raise ValueError(f"encode: characters not in the vocabulary: {missing!r}")
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        """A sequence of token ids -> str."""
        return "".join(self.chars[int(i)] for i in ids)

    def batch(self, split: str, batch_size: int, length: int, gen=0):
        """Random windows for next-character prediction: x, y (batch_size, length), y = x shifted by one."""
        data = {"train": self.train, "val": self.val}.get(split)
        if data is None:
            raise ValueError(f"batch: split must be 'train' or 'val'; got {split!r}")
        if not 1 <= length < len(data):
            raise ValueError(f"batch: length must be in 1 .. {len(data) - 1}; got {length}")
        start = torch.randint(0, len(data) - length, (batch_size,), generator=_generator(gen))  # (batch,)
        idx = start[:, None] + torch.arange(length + 1)  # (batch, length + 1)
        window = data[idx]
        return window[:, :-1], window[:, 1:]


def char_corpus(val_fraction: float = 0.1, seed: int = 0) -> CharCorpus:
    """Python's ``pydoc_data.topics`` as a character corpus, split by document.

    The topics (documents such as "assignment" or "for") are shuffled with
    ``seed``; whole documents go to validation until it holds at least
    ``val_fraction`` of the characters, so no validation text is seen in
    training. Documents are joined with a blank line. The vocabulary is every
    character of the whole corpus (so validation text is always encodable).
    The exact text depends on the Python version that runs it.
    """
    from pydoc_data.topics import topics

    if not 0 < val_fraction < 1:
        raise ValueError(f"char_corpus: val_fraction must be in (0, 1); got {val_fraction}")
    names = sorted(topics)
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    docs = [topics[names[i]].strip() for i in order]
    total = sum(len(d) for d in docs)
    val_docs, count = [], 0
    while count < val_fraction * total:
        val_docs.append(docs.pop())
        count += len(val_docs[-1])
    train_text, val_text = "\n\n".join(docs), "\n\n".join(val_docs)
    corpus = CharCorpus(chars="".join(sorted(set(train_text) | set(val_text))), train=torch.empty(0), val=torch.empty(0))
    corpus.train, corpus.val = corpus.encode(train_text), corpus.encode(val_text)
    return corpus


# ----------------------------------------------------------------------------
# State tracking (chapter 9): parity and modular counting
# ----------------------------------------------------------------------------


def modular_counting(n: int, *, L: int = 32, modulus: int = 3, vocab: int | None = None, gen=0):
    """Count the ones modulo ``modulus``, at every position: a state-tracking task.

    Tokens: 0 and 1 are bits, ``vocab - 1`` is a start token at position 0
    (``vocab`` defaults to max(modulus, 2) + 1; the answers 0 .. modulus - 1
    are tokens too, so that the model's head can say them). Each sequence is
    the start token and L random bits (length L + 1). The target at position
    t >= 1 is (number of ones among x[1 .. t]) mod ``modulus``; position 0 is
    IGNORE_INDEX.

        x:  S 1 0 1 1 1 0        (modulus 3, S = start)
        y:  . 1 1 2 0 1 1

    The answer at t depends on the whole prefix, through a state that cycles
    through ``modulus`` values: a rotation by 2π / modulus per one does it,
    a decaying real state cannot. Returns x, y (n, L + 1) int64.
    """
    op = "modular_counting"
    _check_int(op, "n", n, 1)
    _check_int(op, "L", L, 1)
    _check_int(op, "modulus", modulus, 2)
    vocab = max(modulus, 2) + 1 if vocab is None else vocab
    _check_int(op, "vocab", vocab, max(modulus, 2) + 1)
    g = _generator(gen)
    bits = torch.randint(0, 2, (n, L), generator=g)  # (n, L)
    x = torch.cat([torch.full((n, 1), vocab - 1, dtype=torch.long), bits], dim=1)  # (n, L + 1)
    y = torch.full_like(x, IGNORE_INDEX)
    y[:, 1:] = torch.cumsum(bits, dim=1) % modulus
    return x, y


def parity(n: int, *, L: int = 32, vocab: int = 3, gen=0):
    """The running parity of a bit string: ``modular_counting`` with modulus 2.

    x = start token (``vocab - 1``), then L random bits; the target at t >= 1
    is x[1] xor ... xor x[t]. Returns x, y (n, L + 1) int64.
    """
    return modular_counting(n, L=L, modulus=2, vocab=vocab, gen=gen)


TASKS["parity"] = parity
TASKS["modular_counting"] = modular_counting
__all__ += ["parity", "modular_counting"]


# ----------------------------------------------------------------------------
# Associative recall (chapter 11): multi-query associative recall (MQAR)
# ----------------------------------------------------------------------------


def mqar(n: int, *, L: int = 64, kv=4, vocab: int = 256, power_a: float = 0.01, random_non_queries: bool = False,
         gen=0):
    """Multi-query associative recall (Arora et al. 2024, Zoology's ``multiquery_ar``).

    Tokens: keys are 1 .. vocab/2 - 1, values vocab/2 .. vocab - 1, and 0 is
    filler. Each sequence opens with ``kv`` key-value pairs ``k1 v1 k2 v2 ...``
    (distinct keys, distinct values); the rest of the L positions is filler
    with every key asked once, at an even offset 2·gap after the pairs. The
    target at a query is the value that followed that key in the pairs; every
    other target is IGNORE_INDEX.

        x:  5 9 2 12 7 10 | 0 0 2 0 0 0 5 0 7 0      (vocab 16, kv 3, L 16)
        y:  . . . .  . .  | . . 12 . . . 9 . 10 .

    The gaps are distinct, drawn with probability ∝ (gap + 1)^(power_a - 1)
    (Zoology's a = 0.01: most queries come soon after the pairs, some far).
    ``kv`` is an int, or a sequence of ints: then each example draws its own
    number of pairs from it (a mixture, to train one model for several kv).
    ``random_non_queries=True`` replaces the filler by random tokens (Zoology's
    option; its Figure 2 leaves it off). Requires L even, 4·kv <= L and
    kv <= vocab/2 - 1. Returns x, y (n, L) int64.
    """
    op = "mqar"
    _check_int(op, "n", n, 1)
    _check_int(op, "L", L, 4)
    _check_int(op, "vocab", vocab, 4)
    if L % 2:
        raise ValueError(f"{op}: L must be even (queries sit at even offsets); got {L}")
    choices = [kv] if isinstance(kv, int) and not isinstance(kv, bool) else list(kv)
    if not choices:
        raise ValueError(f"{op}: kv must be an int or a non-empty sequence of ints; got {kv!r}")
    for c in choices:
        _check_int(op, "kv", c, 1)
        if 4 * c > L or c > vocab // 2 - 1:
            raise ValueError(f"{op}: kv = {c} needs 4·kv <= L = {L} and kv <= vocab/2 - 1 = {vocab // 2 - 1}")
    g = _generator(gen)
    pick = torch.randint(0, len(choices), (n,), generator=g)  # (n,) which kv each example uses
    x = torch.zeros(n, L, dtype=torch.long)
    y = torch.full((n, L), IGNORE_INDEX, dtype=torch.long)
    for i, c in enumerate(choices):
        rows = (pick == i).nonzero().flatten()  # (m,)
        if len(rows):
            x[rows], y[rows] = _mqar_rows(len(rows), L, c, vocab, power_a, g)
    if random_non_queries:
        filler = x == 0
        x[filler] = torch.randint(0, vocab, (n, L), generator=g)[filler]
    return x, y


def _mqar_rows(m: int, L: int, kv: int, vocab: int, power_a: float, g: torch.Generator):
    """``m`` MQAR examples with exactly ``kv`` pairs: x, y (m, L) int64."""
    half = vocab // 2
    # distinct keys and values: the first kv entries of a random permutation of each range
    keys = torch.rand(m, half - 1, generator=g).argsort(dim=-1)[:, :kv] + 1  # (m, kv) in 1 .. half-1
    values = torch.rand(m, vocab - half, generator=g).argsort(dim=-1)[:, :kv] + half  # (m, kv)
    space = (L - 2 * kv) // 2  # possible gaps 0 .. space-1
    p = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)  # (space,)
    # kv distinct gaps, drawn one after another with probability ∝ p (exponential clocks: the
    # smallest Exp(1)/p_i come first), as numpy's choice(replace=False, p=p) draws them
    clocks = -torch.log(torch.rand(m, space, generator=g, dtype=torch.float64)) / p  # (m, space)
    gaps = clocks.argsort(dim=-1)[:, :kv]  # (m, kv): query of key i at 2·kv + 2·gaps[:, i]
    x = torch.zeros(m, L, dtype=torch.long)
    x[:, 0:2 * kv:2], x[:, 1:2 * kv:2] = keys, values
    where = 2 * kv + 2 * gaps  # (m, kv)
    x.scatter_(1, where, keys)
    y = torch.full((m, L), IGNORE_INDEX, dtype=torch.long).scatter_(1, where, values)
    return x, y


TASKS["mqar"] = mqar
__all__ += ["mqar"]
