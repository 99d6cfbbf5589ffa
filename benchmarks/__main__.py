"""Entry point: ``python -m benchmarks [--op NAME] [--out FILE]``."""

from __future__ import annotations

import argparse
import sys

from .suite import OPS, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--op", action="append", choices=sorted(OPS), help="operation(s) to time (default: all)")
    parser.add_argument("--out", help="output JSON (default: book/data/benchmarks/<gpu-slug>.json)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(
            "make bench: no CUDA GPU found. The benchmarks time GPU kernels and would only "
            "measure this CPU; run them on a machine with an NVIDIA GPU. (The chapters' "
            "own timing cells work on CPU.)",
            file=sys.stderr,
        )
        return 2
    path = run(args.op or sorted(OPS), args.out)
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
