"""ssm_edu.recall (chapter 11): ideal memories on MQAR, their limits, training on MQAR, the figures."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ssm_edu.hybrid import hybrid_model  # noqa: E402
from ssm_edu.attention import attention_block  # noqa: E402
from ssm_edu.recall import (draw_accuracy_by_kv, ideal_recall, mqar_test_sets, recall_figure, recall_grid,  # noqa: E402
                            train_mqar)


def test_one_pair_is_always_recalled():
    for memory in ("additive", "delta", "attention"):
        assert ideal_recall(memory, N=3, kv=1, n=16) == 1.0


def test_orthogonal_capacity_of_the_additive_memory():
    """With d_k >= kv the keys rarely collide: near-perfect; with d_k = 1 the keys are ±1 and recall fails."""
    assert ideal_recall("additive", N=64, kv=8, n=32) > 0.99
    assert ideal_recall("additive", N=1, kv=8, n=32) < 0.5


def test_capacity_grows_with_the_key_size_and_attention_does_not_need_it():
    acc = recall_grid("additive", (2, 8, 32), (4, 16), n=32)
    assert acc.shape == (3, 2)
    assert (acc[:, 1].diff() > 0).all()  # more key dimensions, more pairs recalled
    assert recall_grid("attention", (4,), (16,), n=32)[0, 0] > 0.99  # a KV cache keeps every pair


def test_delta_rule_with_small_beta_behaves_like_the_additive_memory():
    """Decoding is scale-free: as β -> 0 the delta rule's state tends to β times the additive one."""
    add = ideal_recall("additive", N=8, kv=16, n=32)
    assert abs(ideal_recall("delta", N=8, kv=16, n=32, beta=1e-4) - add) < 0.02
    assert ideal_recall("delta", N=8, kv=16, n=32, beta=1.0) < add  # β = 1 erases overlapping entries


def test_bad_memory_name():
    with pytest.raises(ValueError, match="memory"):
        ideal_recall("lookup", N=4, kv=2)


def test_train_mqar_returns_accuracy_per_kv():
    torch.manual_seed(0)
    model = hybrid_model(16, 16, "A", A=attention_block(n_heads=2))
    tests = mqar_test_sets([1, 2], n=8, L=8, vocab=16)
    acc, history = train_mqar(model, 3, [1, 2], batch=4, tests=tests, L=8, vocab=16)
    assert set(acc) == {1, 2} and all(0 <= a <= 1 for a in acc.values())
    assert len(history.loss) == 3


def test_figures_draw():
    axes = recall_figure(P=8, beta=0.5, Ns=(1, 4), kvs=(1, 4), n=4)
    assert len(axes) == 3 and axes[0].get_xlabel() == "key-value pairs kv"
    _, ax = plt.subplots()
    draw_accuracy_by_kv(ax, {"a": {1: 1.0, 2: 0.5}})
    assert ax.get_ylabel().startswith("recall accuracy")
    plt.close("all")
