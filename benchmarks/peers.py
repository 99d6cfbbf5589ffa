"""The peers a reader would otherwise use, loaded for the benchmark rows.

None of them is a dependency of the book. On the GPU machine they travel in the
git-ignored folder ``.peers/`` (see ``benchmarks/README.md`` for how to fill it):

- ``.peers/mamba_ssm-<version>/``: the unpacked ``mamba-ssm`` sdist. Its Triton
  ops (SSD, ``selective_state_update``, Mamba-3 SISO) are imported from source
  without running ``mamba_ssm/__init__.py``, which would import the CUDA
  extension and the model zoo. Its CUDA selective scan is compiled here, for
  the local GPU's architecture only, with the flags of its ``setup.py``
  (about 3 minutes on 16 cores). The built module is also copied to
  ``.peers/prebuilt/selective_scan_cuda-<torch>-sm<arch>.so``; a later run on a
  machine with the same torch build and GPU architecture loads that file
  instead of compiling (``benchmarks/gpu_session.sh`` brings it back from the
  GPU machine compressed, so that the next session skips the build).
- ``.peers/site/``: pure-Python wheels unpacked (``fla`` for fla-core,
  ``mambapy``, and ``einops`` which both import).

A peer that cannot be loaded raises :class:`Missing`; the suite then writes a
row that says so instead of a time. Nothing is ever faked.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import sys
import types

ROOT = pathlib.Path(__file__).resolve().parents[1]
PEERS = pathlib.Path(os.environ.get("SSM_EDU_PEERS", ROOT / ".peers"))


class Missing(RuntimeError):
    """A peer implementation is not available on this machine (the message says why)."""


def _site() -> None:
    site = PEERS / "site"
    if site.is_dir() and str(site) not in sys.path:
        sys.path.append(str(site))  # appended: packages installed properly take precedence


def _mamba_root() -> pathlib.Path:
    found = sorted(PEERS.glob("mamba_ssm-*/mamba_ssm"))
    if not found:
        raise Missing(f"mamba_ssm source not found under {PEERS} (unpack the mamba-ssm sdist there)")
    return found[-1].parent


def mamba_ssm(module: str):
    """Import ``mamba_ssm.<module>`` from the sdist without the package's ``__init__``."""
    _site()
    root = _mamba_root()
    if "mamba_ssm" not in sys.modules:
        pkg = types.ModuleType("mamba_ssm")
        pkg.__path__ = [str(root / "mamba_ssm")]  # a bare package: submodules import, __init__ never runs
        sys.modules["mamba_ssm"] = pkg
    try:
        return importlib.import_module(f"mamba_ssm.{module}")
    except ImportError as err:
        raise Missing(f"mamba_ssm.{module} does not import: {err}") from err


def prebuilt_path() -> pathlib.Path:
    """Where the compiled ``selective_scan_cuda`` of this torch build and GPU architecture is kept.

    No '+' in the name (``2.11.0+cu130`` becomes ``2.11.0_cu130``): the lent machine's output folder
    refuses such names, and the module comes back from there.
    """
    import torch

    major, minor = torch.cuda.get_device_capability()
    return PEERS / "prebuilt" / f"selective_scan_cuda-{torch.__version__.replace('+', '_')}-sm{major}{minor}.so"


def _load_prebuilt(path: pathlib.Path):
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.ExtensionFileLoader("selective_scan_cuda", str(path))
    spec = importlib.util.spec_from_file_location("selective_scan_cuda", str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def selective_scan_cuda():
    """Compile (once per machine) and import mamba_ssm's CUDA selective scan, as ``selective_scan_cuda``."""
    if "selective_scan_cuda" in sys.modules:
        return sys.modules["selective_scan_cuda"]
    import shutil

    import torch
    from torch.utils.cpp_extension import CUDA_HOME, load

    if not torch.cuda.is_available():
        raise Missing("no CUDA GPU for mamba_ssm's selective_scan_cuda")
    prebuilt = prebuilt_path()
    if prebuilt.exists():
        try:
            module = _load_prebuilt(prebuilt)
            sys.modules["selective_scan_cuda"] = module
            return module
        except ImportError as err:  # another torch ABI after all: compile instead
            print(f"prebuilt {prebuilt.name} does not load ({err}); compiling", file=sys.stderr)
    if CUDA_HOME is None:
        raise Missing("no nvcc/CUDA to compile mamba_ssm's selective_scan_cuda")
    csrc = _mamba_root() / "csrc" / "selective_scan"
    major, minor = torch.cuda.get_device_capability()
    os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"  # this GPU only: a fraction of the full build
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    build = PEERS / "build" / "selective_scan_cuda"
    build.mkdir(parents=True, exist_ok=True)
    flags = [  # mamba_ssm's setup.py, minus the per-architecture list
        "-O3", "-std=c++17", "--use_fast_math", "--expt-relaxed-constexpr", "--expt-extended-lambda",
        "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__", "-lineinfo",
    ]
    try:
        module = load(
            name="selective_scan_cuda",
            sources=[str(csrc / "selective_scan.cpp"), *map(str, sorted(csrc.glob("selective_scan_*.cu")))],
            extra_cflags=["-O3", "-std=c++17"], extra_cuda_cflags=flags, extra_include_paths=[str(csrc)],
            build_directory=str(build), verbose=False,
        )
    except Exception as err:  # a compiler error is a missing peer, reported with its message
        raise Missing(f"compiling selective_scan_cuda failed: {str(err)[-500:]}") from err
    sys.modules["selective_scan_cuda"] = module
    prebuilt.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(module.__file__, prebuilt)
    return module


def selective_scan_fn():
    """mamba_ssm's ``selective_scan_fn`` (forward and backward through the CUDA kernel)."""
    selective_scan_cuda()
    return mamba_ssm("ops.selective_scan_interface").selective_scan_fn


def pure_python(name: str):
    """Import a pure-Python peer (``fla``, ``mambapy``) from ``.peers/site`` or the environment."""
    _site()
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise Missing(f"{name} does not import: {err}") from err
