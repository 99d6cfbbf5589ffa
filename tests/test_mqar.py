"""tasks.mqar (chapter 11): Zoology's multi-query associative recall, its structure, mixtures, seeds, bad input."""

import pytest
import torch

from ssm_edu.tasks import IGNORE_INDEX, TASKS, mqar, task_batches


def lookup_answers(x, kv):
    """The task solved by reading it: a dictionary of the kv pairs, asked at every later occurrence of a key."""
    out = torch.full_like(x, IGNORE_INDEX)
    for row, n in zip(range(len(x)), kv):
        pairs = {int(x[row, 2 * i]): int(x[row, 2 * i + 1]) for i in range(n)}
        for t in range(2 * n, x.shape[1]):
            if int(x[row, t]) in pairs:
                out[row, t] = pairs[int(x[row, t])]
    return out


@pytest.mark.parametrize("L,kv,vocab", [(4, 1, 4), (16, 3, 16), (64, 4, 256), (64, 16, 40), (30, 7, 100)])
def test_structure(L, kv, vocab):
    x, y = mqar(50, L=L, kv=kv, vocab=vocab, gen=0)
    assert x.shape == y.shape == (50, L) and x.dtype == y.dtype == torch.int64
    half = vocab // 2
    keys, values = x[:, 0:2 * kv:2], x[:, 1:2 * kv:2]  # (50, kv) each
    assert ((keys >= 1) & (keys < half)).all() and ((values >= half) & (values < vocab)).all()
    for row in range(50):  # distinct keys and distinct values in every example
        assert len(set(keys[row].tolist())) == kv and len(set(values[row].tolist())) == kv
    asked = y != IGNORE_INDEX
    assert (asked.sum(1) == kv).all()  # every key asked exactly once
    assert not asked[:, :2 * kv].any()  # nothing asked inside the pairs
    offsets = asked.nonzero()[:, 1] - 2 * kv
    assert (offsets % 2 == 0).all()  # queries at even offsets after the pairs
    rest = x[:, 2 * kv:]
    assert ((rest == 0) | (y[:, 2 * kv:] != IGNORE_INDEX)).all()  # filler everywhere else
    assert torch.equal(y, lookup_answers(x, [kv] * 50))  # the answer is the value paired with the key


def test_mixture_of_kv():
    x, y = mqar(400, L=64, kv=[1, 4, 16], vocab=256, gen=3)
    n_asked = (y != IGNORE_INDEX).sum(1)
    assert set(n_asked.tolist()) == {1, 4, 16}  # each example draws its own number of pairs
    assert torch.equal(y, lookup_answers(x, n_asked.tolist()))


def test_seeded_and_fresh():
    a, b = mqar(8, gen=5), mqar(8, gen=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(mqar(8, gen=6)[0], a[0])
    assert torch.equal(mqar(8, gen=torch.Generator().manual_seed(5))[0], a[0])  # a Generator or its seed
    assert TASKS["mqar"] is mqar
    get = task_batches("mqar", 4, seed=0, L=32, kv=2, vocab=64)
    (x1, _), (x2, _) = get(), get()
    assert x1.shape == (4, 32) and not torch.equal(x1, x2)  # fresh batches


def test_gaps_favour_early_queries():
    """Zoology's p(gap) ∝ (gap + 1)^(a - 1): with a = 0.01 most queries come soon after the pairs; a = 1 is uniform."""
    def mean_offset(a):
        _, y = mqar(2000, L=64, kv=1, vocab=64, power_a=a, gen=0)
        return ((y != IGNORE_INDEX).nonzero()[:, 1] - 2).float().mean().item()

    near, uniform = mean_offset(0.01), mean_offset(1.0)
    assert abs(uniform - 60 / 2) < 2  # offsets 0, 2, .., 60: mean 30
    assert near < 0.6 * uniform


def test_random_non_queries_only_replaces_the_filler():
    x0, y0 = mqar(64, L=64, kv=4, vocab=128, gen=2)
    x1, y1 = mqar(64, L=64, kv=4, vocab=128, gen=2, random_non_queries=True)
    assert torch.equal(y0, y1)
    keep = x0 != 0
    assert torch.equal(x1[keep], x0[keep])
    assert (x1[~keep] != 0).float().mean() > 0.9  # random tokens (0 itself is drawn 1 time in 128)


@pytest.mark.parametrize("kwargs,match", [
    (dict(L=15), "even"),
    (dict(L=16, kv=5), "4·kv"),
    (dict(L=64, kv=8, vocab=16), "vocab"),
    (dict(kv=0), "kv"),
    (dict(kv=[]), "kv"),
    (dict(kv=[2, 0]), "kv"),
    (dict(vocab=3), "vocab"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mqar(2, **kwargs)
    with pytest.raises(ValueError, match="n"):
        mqar(0)
