"""Triton GPU kernels of the book, installed as ``ssm_edu.kernels``.

One module per operation, named like the ``ssm_edu`` module it accelerates
(``kernels/causal_conv.py`` for ``ssm_edu.causal_conv``). Each module's
docstring says how the work is split across programs, where the state lives,
what moves through memory and why. The dispatchers in ``ssm_edu`` import these
modules only when ``impl="triton"`` is asked for, so ``ssm_edu`` works without
Triton installed.

Without a GPU, ``ssm_edu`` sets ``TRITON_INTERPRET=1`` at import time and the
same kernels run in Triton's CPU interpreter (float32 only). Kernels must
compile with the Triton versions the book supports: 3.7 (CI) and 3.6.
"""
