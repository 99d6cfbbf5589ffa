"""GPU benchmarks of the book's kernels (`make bench`, `python -m benchmarks`).

Results go to book/data/benchmarks/<gpu>.json with the GPU model, the library
versions and the date; the book's performance pages plot them, so the book
shows real measurements without a GPU at build time. Timings are medians from
``triton.testing.do_bench`` after a warm-up, on fresh random inputs, each
preceded by a correctness check against the vectorized version.
"""
