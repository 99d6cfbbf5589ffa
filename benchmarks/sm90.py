"""A Triton kernel compiled for an H100 (sm_90) without one: the compile tables of the kernel notes.

Triton's compiler and the ptxas and cuobjdump of its wheel, no GPU: ``signature`` specialises a kernel's
arguments as the JIT would, ``compile_sm90`` compiles it and reads registers and spills from ptxas,
``dump`` writes TTGIR, PTX and SASS for reading; ``record_launches`` runs launchers (on meta tensors) and keeps
their launches instead of making them, ``launch_signature`` turns one into ``signature``'s arguments. Used by
``compile_selective.py``, ``compile_mamba3.py``, ``sweep_ssd.py --compile`` and ``compile_test_costs.py``; the
caller sets ``TRITON_INTERPRET=0`` before any kernel is imported.
"""

import inspect
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def signature(fn, constexprs, pointers, ints):
    """(signature, constexprs, attributes) of ``fn`` as the JIT would specialise them.

    ``constexprs`` name the constexpr arguments (those left out take their defaults), ``pointers`` the
    pointer arguments' types ("*bf16"), ``ints`` the values of the scalar ones: an int equal to 1 becomes
    a constant, multiples of 16 and every pointer get divisibility 16, a float is an fp32 argument.
    """
    ce = dict(constexprs)
    sig, attrs = {}, {}
    for i, (name, param) in enumerate(inspect.signature(fn.fn).parameters.items()):
        if name in ce or param.default is not param.empty:
            ce.setdefault(name, param.default)
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(ints[name], float):
            sig[name] = "fp32"
        elif ints[name] == 1:
            sig[name] = "constexpr"
            ce[name] = 1
        else:
            sig[name] = "i32"
            if ints[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, ce, attrs


def compile_sm90(fn, sig, ce, attrs, num_warps, num_stages, sass=True):
    """Compile for sm_90. Returns (the compiled kernel, registers per thread, (spill stores, spill loads) in
    bytes, its SASS or None without ``sass``)."""
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=ce, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=num_warps, num_stages=num_stages))
    code = None
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(ptx, "w") as f:
            f.write(k.asm["ptx"])
        info = subprocess.run([os.path.join(BIN, "ptxas"), "-arch=sm_90a", "-v", ptx, "-o", cubin],
                              capture_output=True, text=True, check=True).stderr
        if sass:
            code = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", cubin], capture_output=True, text=True,
                                  check=True).stdout
    regs = int(re.search(r"Used (\d+) registers", info).group(1))
    spill = tuple(int(re.search(rf"(\d+) bytes spill {w}", info).group(1)) for w in ("stores", "loads"))
    return k, regs, spill, code


def dump(k, sass, directory, label):
    """Write the kernel's TTGIR, PTX and SASS to ``directory``, named after ``label``."""
    os.makedirs(directory, exist_ok=True)
    stem = os.path.join(directory, re.sub(r"[^A-Za-z0-9_]+", "_", label))
    for ext, text in (("ttgir", k.asm["ttgir"]), ("ptx", k.asm["ptx"]), ("sass", sass)):
        with open(f"{stem}.{ext}", "w") as f:
            f.write(text)


TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def sass_loops(sass):
    """A kernel's SASS (``compile_sm90``'s) as (address, instruction) pairs, and its loops: the (target, address)
    of every backward branch (a BRA to an earlier address), in address order."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", sass, re.M)]
    loops = []
    for addr, text in ins:
        target = re.search(r"0x([0-9a-f]+)", text.split("BRA")[-1]) if "BRA" in text else None
        if target and int(target.group(1), 16) < addr:
            loops.append((int(target.group(1), 16), addr))
    return ins, loops


def record_launches(kernels, run):
    """Call ``run()`` with the kernels ``kernels`` ({module: [names]}) replaced by recorders: each
    ``kernel[grid](...)`` appends (kernel, grid, args, kwargs) to the list returned, in order, instead of
    launching (meta tensors do for inputs)."""
    log = []

    class Recorder:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *a, **k: log.append((self.fn, grid, a, k))

    saved = {(m, n): getattr(m, n) for m, names in kernels.items() for n in names}
    try:
        for (m, n), f in saved.items():
            setattr(m, n, Recorder(f))
        run()
    finally:
        for (m, n), f in saved.items():
            setattr(m, n, f)
    return log


def launch_signature(fn, args, kwargs):
    """(signature, constexprs, attributes, num_warps, num_stages) of one recorded launch, as the JIT would
    specialise it (``signature``)."""
    kwargs = dict(kwargs)
    warps, stages = kwargs.pop("num_warps", 4), kwargs.pop("num_stages", 3)
    ce, pointers, scalars = {}, {}, {}
    for i, (name, param) in enumerate(inspect.signature(fn.fn).parameters.items()):
        v = args[i] if i < len(args) else kwargs.get(name, param.default)
        if "constexpr" in str(param.annotation) or (name in kwargs and i >= len(args)):
            ce[name] = v
        elif isinstance(v, torch.Tensor):
            pointers[name] = "*" + TYPES[v.dtype]
        else:
            scalars[name] = v if isinstance(v, int) else float(v)
    return (*signature(fn, ce, pointers, scalars), warps, stages)
