"""Repository-wide pytest set-up that must also apply to ``pytest chapters/<one>.ipynb``.

nbval waits a hard-coded 5 s for each kernel message that follows a cell's
execute reply (``IPyNbCell.output_timeout``; there is no option for it, see
computationalmodelling/nbval#136 and #231). On the two-core CI machine, while
the other xdist worker builds the book, a long training cell's queued output
(the tqdm widget updates of chapter 7's ``fit``) once took longer than that to
drain, and a cell that had run correctly failed with "Timeout of 5 seconds
exceeded waiting for output". The per-message wait is raised here. A cell that
really hangs is still caught by ``--nbval-cell-timeout`` and pytest-timeout
(pytest.ini).
"""

NBVAL_OUTPUT_TIMEOUT_S = 120


def pytest_collection_modifyitems(config, items):
    for item in items:
        # Duck-typed: nbval's cell items are the only ones with this attribute.
        if hasattr(item, "output_timeout"):
            item.output_timeout = NBVAL_OUTPUT_TIMEOUT_S
