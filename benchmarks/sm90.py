"""A Triton kernel compiled for an H100 (sm_90) without one: the compile tables of the kernel notes.

Triton's compiler and the ptxas and cuobjdump of its wheel, no GPU: ``signature`` specialises a kernel's
arguments as the JIT would, ``compile_sm90`` compiles it and reads registers and spills from ptxas,
``dump`` writes TTGIR, PTX and SASS for reading. Used by ``compile_selective.py``, ``compile_mamba3.py``
and ``sweep_ssd.py --compile``; the caller sets ``TRITON_INTERPRET=0`` before any kernel is imported.
"""

import inspect
import os
import re
import subprocess
import tempfile

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
