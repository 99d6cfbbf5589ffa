"""ssm_edu.tasks: the synthetic tasks' structure and answers, seeding, and the character corpus."""

import pytest
import torch

from ssm_edu.tasks import IGNORE_INDEX, TASKS, answer_mask, char_corpus, induction_heads, selective_copying, task_batches


@pytest.mark.parametrize("L,M,vocab", [(0, 1, 3), (5, 3, 8), (64, 4, 8), (31, 8, 16)])
def test_selective_copying_structure(L, M, vocab):
    x, y = selective_copying(50, L=L, M=M, vocab=vocab, gen=0)
    assert x.shape == y.shape == (50, L + 2 * M) and x.dtype == y.dtype == torch.long
    assert int(x.min()) >= 0 and int(x.max()) == vocab - 1
    body, markers = x[:, : L + M], x[:, L + M:]
    assert bool((markers == vocab - 1).all())
    assert bool((body != vocab - 1).all())  # the marker never appears among the data
    # the answers are exactly the data tokens, in order of appearance
    for row in range(50):
        data = body[row][body[row] != 0]
        assert data.tolist() == y[row, L + M:].tolist()
    assert bool((y[:, : L + M] == IGNORE_INDEX).all())
    assert bool(((y[:, L + M:] >= 1) & (y[:, L + M:] <= vocab - 2)).all())


def test_selective_copying_positions_vary():
    """The data tokens sit at random positions, not at fixed ones (else an LTI model could copy)."""
    x, _ = selective_copying(200, L=32, M=4, vocab=8, gen=1)
    first = (x[:, :36] != 0).float().argmax(-1)
    assert len(set(first.tolist())) > 10


@pytest.mark.parametrize("L,vocab", [(3, 3), (9, 11), (64, 16)])
def test_induction_heads_structure(L, vocab):
    x, y = induction_heads(100, L=L, vocab=vocab, gen=0)
    trigger = vocab - 1
    assert x.shape == y.shape == (100, L)
    assert bool((x[:, -1] == trigger).all())
    assert bool((y[:, :-1] == IGNORE_INDEX).all())
    for row in range(100):
        where = (x[row, :-1] == trigger).nonzero().flatten().tolist()
        assert len(where) == 1 and where[0] <= L - 3  # one earlier trigger, followed by a token
        assert int(y[row, -1]) == int(x[row, where[0] + 1]) != trigger


@pytest.mark.parametrize("name", ["selective_copying", "induction_heads"])
def test_seeded_and_fresh(name):
    a, b, c = (TASKS[name](8, vocab=8, gen=s) for s in (5, 5, 6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    get = task_batches(name, 8, seed=5, vocab=8)
    first, second = get(), get()
    assert torch.equal(first[0], a[0])  # the first batch is the seed's batch
    assert not torch.equal(first[0], second[0])  # later ones are fresh
    assert answer_mask(first[1]).any(-1).all()


def test_bad_input():
    with pytest.raises(ValueError, match="vocab"):
        selective_copying(4, vocab=2)
    with pytest.raises(ValueError, match="M"):
        selective_copying(4, M=0)
    with pytest.raises(ValueError, match="L"):
        induction_heads(4, L=2)
    with pytest.raises(ValueError, match="gen"):
        induction_heads(4, gen=1.5)


def test_char_corpus():
    corpus = char_corpus(val_fraction=0.1, seed=0)
    n_train, n_val = len(corpus.train), len(corpus.val)
    assert 0.09 < n_val / (n_train + n_val) < 0.2 and n_train > 300_000
    assert corpus.vocab_size == len(set(corpus.chars)) and list(corpus.chars) == sorted(corpus.chars)
    text = corpus.decode(corpus.train[:200])
    assert torch.equal(corpus.encode(text), corpus.train[:200])
    assert corpus.decode(corpus.val[:50]) not in corpus.decode(corpus.train)  # split by document
    x, y = corpus.batch("train", 4, 32, gen=0)
    assert x.shape == y.shape == (4, 32) and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(char_corpus(seed=0).val, corpus.val) and not torch.equal(char_corpus(seed=1).val[:1000], corpus.val[:1000])
    with pytest.raises(ValueError, match="split"):
        corpus.batch("test", 4, 32)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        corpus.encode("\u2603")
