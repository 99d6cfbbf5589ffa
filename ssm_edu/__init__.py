"""ssm_edu: the companion package of the SSM book.

Every algorithm of the book exists as a naive loop (the specification), a
vectorized PyTorch version and, where it pays, a Triton kernel
(``ssm_edu.kernels``). Each public operation takes ``impl=`` to choose one;
API.md in the repository lists the public names and their semantics.
"""

import os as _os

import torch as _torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, so it must be set
# before any module of ssm_edu.kernels is imported. Without a GPU the kernels
# then run (slowly, in float32) in Triton's CPU interpreter. setdefault: a
# reader's own setting wins.
if not _torch.cuda.is_available():
    _os.environ.setdefault("TRITON_INTERPRET", "1")
    # Triton imported before us (by another library, or a reader's `import triton` first) decorated its own
    # language library in compiled mode, which the interpreter cannot call: interpret it too (see _interpret).
    if _os.environ["TRITON_INTERPRET"] == "1":
        from . import _interpret

        if _interpret.language_is_compiled():
            _interpret.interpret_language()  # on failure, impl="triton" raises _interpret.HINT at once

from ._dispatch import TRITON_INSTALL_HINT, triton_available  # noqa: E402
from .convolution import causal_conv, lti_recurrence, ssm_kernel, toeplitz  # noqa: E402
from .continuous import damped_oscillator, impulse_response, rc_filter, simulate, step_response  # noqa: E402
from .device import default_device, describe, device_name, for_device, on_gpu  # noqa: E402
from .discretize import METHODS, discretize, discretize_diag, init_log_dt, softplus_inverse  # noqa: E402
from .exercises import check  # noqa: E402
from .hippo import (MEASURES, MEMORY_MEASURES, hippo, hippo_basis, hippo_memorize, hippo_reconstruct,  # noqa: E402
                    hippo_rmse, hippo_test_signal, sample_ages)
from .numerics import rel_error, tolerance  # noqa: E402
from .s4 import S4Classifier, S4Layer, cauchy, nplr_legs, s4_kernel  # noqa: E402
from .scan import linear_scan  # noqa: E402
from .delta import delta_rule  # noqa: E402
from .diagonal import S4D, S5, S4D_INITS, s4d_init, s4d_kernel  # noqa: E402
from .ssd import segsum, segsum_unstable, ssd  # noqa: E402
from .selective import selective_scan, selective_scan_chunked, selective_state_update  # noqa: E402
from .mamba3 import Mamba3State, mamba3, mamba3_step, rotate_pairs, trapezoid_weights  # noqa: E402
from .mamba import Mamba  # noqa: E402
from .lm import SequenceModel  # noqa: E402
from .tasks import char_corpus, induction_heads, selective_copying  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "MEASURES",
    "MEMORY_MEASURES",
    "hippo",
    "hippo_basis",
    "hippo_memorize",
    "hippo_reconstruct",
    "hippo_rmse",
    "hippo_test_signal",
    "sample_ages",
    "TRITON_INSTALL_HINT",
    "causal_conv",
    "check",
    "damped_oscillator",
    "default_device",
    "describe",
    "device_name",
    "discretize",
    "discretize_diag",
    "for_device",
    "impulse_response",
    "init_log_dt",
    "lti_recurrence",
    "on_gpu",
    "rc_filter",
    "rel_error",
    "simulate",
    "softplus_inverse",
    "ssm_kernel",
    "step_response",
    "tolerance",
    "toeplitz",
    "triton_available",
    "S4Classifier",
    "S4Layer",
    "cauchy",
    "nplr_legs",
    "s4_kernel",
    "linear_scan",
    "delta_rule",
    "S4D",
    "S5",
    "S4D_INITS",
    "s4d_init",
    "s4d_kernel",
    "segsum",
    "segsum_unstable",
    "ssd",
    "selective_scan",
    "selective_scan_chunked",
    "selective_state_update",
    "Mamba3State",
    "mamba3",
    "mamba3_step",
    "rotate_pairs",
    "trapezoid_weights",
    "Mamba",
    "SequenceModel",
    "char_corpus",
    "induction_heads",
    "selective_copying",
]
