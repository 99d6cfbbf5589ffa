"""Entry point: ``python -m benchmarks [--op NAME ...] [--shape "B8 D2048 L2048 N16" ...] [--out FILE]``."""

from __future__ import annotations

import argparse
import sys

from .suite import OPS, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--op", action="append", choices=sorted(OPS), help="operation(s) to time (default: all)")
    parser.add_argument("--shape", action="append", help='time only this shape string, e.g. "B8 D2048 L2048 N16" (repeatable; default: every shape)')
    parser.add_argument("--out", help="output JSON (default: book/data/benchmarks/<gpu-slug>.json)")
    parser.add_argument("--merge", metavar="JSON", help="merge a results file measured elsewhere into book/data/benchmarks/ (no GPU needed)")
    args = parser.parse_args(argv)
    if args.merge:
        import json
        import pathlib

        from .suite import ROOT, gpu_slug, merge

        doc = json.loads(pathlib.Path(args.merge).read_text())
        path = pathlib.Path(args.out) if args.out else ROOT / "book" / "data" / "benchmarks" / f"{gpu_slug(doc['device'])}.json"
        merge(doc, path)
        print(f"merged into {path}")
        return 0

    import torch

    if not torch.cuda.is_available():
        print(
            "make bench: no CUDA GPU found. The benchmarks time GPU kernels and would only "
            "measure this CPU; run them on a machine with an NVIDIA GPU. (The chapters' "
            "own timing cells work on CPU.)",
            file=sys.stderr,
        )
        return 2
    path = run(args.op or sorted(OPS), args.out, args.shape)
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
