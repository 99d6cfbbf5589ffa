# The few commands a newcomer needs. Everything runs in ./.venv, created on first use.
#   make book    build the HTML book into _build/html (with solutions)
#   make test    the whole suite: unit tests, Triton kernels in the CPU interpreter,
#                every chapter notebook (nbval) and a from-scratch book build
#   make serve   serve the built book on http://localhost:8000
#   make bench   GPU benchmarks (refuses without a GPU)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 8000
JOBS   ?= 2

.PHONY: help book test serve bench clean

help:
	@sed -n '1,7p' Makefile

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo ""
	@echo "The book is built. Open: file://$(CURDIR)/_build/html/index.html"
	@echo "or run 'make serve' and visit http://localhost:$(PORT)"

# One thread per process: the suite runs JOBS workers (and their notebook kernels)
# side by side, and PyTorch's OpenMP threads spin-waiting for each other on a
# small machine can make a notebook a hundred times slower.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(JOBS) --dist loadfile

serve:
	@test -f _build/html/index.html || { echo "No built book in _build/html: run 'make book' first."; exit 1; }
	@echo "Serving the book at http://localhost:$(PORT) (Ctrl-C stops)"
	$(PY) -m http.server $(PORT) --bind 127.0.0.1 --directory _build/html

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf _build tests/artifacts
