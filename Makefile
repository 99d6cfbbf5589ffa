# The few commands a newcomer needs. Everything runs in ./.venv, created on first use.
#   make book    build the HTML book into _build/html (with solutions)
#   make book-student  the same book without solutions, checked, in _build/student/_build/html
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

# MathJax and the widget manager, served from the built book so that it reads
# offline (classrooms, CI): npm packages fetched into build/js by `make js` and
# copied into _build/html/_static/vendor by the build (book/_ext/offline_js.py);
# never committed. Without npm the pages load both from a CDN, as the online
# build does (make book OFFLINE_JS=0).
OFFLINE_JS ?= 1
JS_DIR     := build/js
MATHJAX    := mathjax@3.2.2
WIDGETS_JS := @jupyter-widgets/html-manager@1.0.15
JS_STAMP   := $(JS_DIR)/static/.installed
BOOK_JS     = $(if $(filter 1,$(OFFLINE_JS)),SSM_BOOK_JS=$$(test -f $(JS_STAMP) && echo $(CURDIR)/$(JS_DIR)/static))

.PHONY: help book book-student test serve bench clean js

help:
	@sed -n '1,8p' Makefile

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

book: $(STAMP) $(if $(filter 1,$(OFFLINE_JS)),js)
	$(BOOK_JS) $(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo ""
	@echo "The book is built. Open: file://$(CURDIR)/_build/html/index.html"
	@echo "or run 'make serve' and visit http://localhost:$(PORT)"

# The book without the exercises' solutions (sphinx-exercise's hide_solutions), for
# students. It reuses the notebooks that `make book` executed (run that first) and
# fails if any solution text is left in a page or a downloadable notebook.
book-student: $(STAMP) $(if $(filter 1,$(OFFLINE_JS)),js)
	$(BOOK_JS) $(PY) book/_ext/student_build.py

# One thread per process: the suite runs JOBS workers (and their notebook kernels)
# side by side, and PyTorch's OpenMP threads spin-waiting for each other on a
# small machine can make a notebook a hundred times slower.
test: $(STAMP) js
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(JOBS) --dist loadfile

js: $(JS_STAMP)

$(JS_STAMP): Makefile
	@if ! command -v npm >/dev/null; then \
	  echo "npm not found: the book will load MathJax and the widget manager from a CDN (install npm to read it offline)"; \
	else \
	  rm -rf $(JS_DIR) && mkdir -p $(JS_DIR)/static/vendor/widgets $(JS_DIR)/unpack && cd $(JS_DIR) && \
	  npm pack --silent --pack-destination unpack $(MATHJAX) $(WIDGETS_JS) >/dev/null && \
	  tar xzf unpack/mathjax-*.tgz -C unpack && mv unpack/package/es5 static/vendor/mathjax && \
	  cp unpack/package/LICENSE static/vendor/mathjax/ && rm -rf unpack/package && \
	  tar xzf unpack/jupyter-widgets-html-manager-*.tgz -C unpack && \
	  cp unpack/package/dist/embed.js* unpack/package/dist/*.woff* unpack/package/dist/*.ttf unpack/package/dist/*.eot \
	     unpack/package/dist/*.svg static/vendor/widgets/ && rm -f static/vendor/widgets/embed.js.map && \
	  rm -rf unpack && echo "$(MATHJAX) $(WIDGETS_JS)" > $(CURDIR)/$(JS_STAMP) && \
	  echo "MathJax and the widget manager installed in $(JS_DIR) ($(MATHJAX), $(WIDGETS_JS))"; \
	fi

serve:
	@test -f _build/html/index.html || { echo "No built book in _build/html: run 'make book' first."; exit 1; }
	@echo "Serving the book at http://localhost:$(PORT) (Ctrl-C stops)"
	$(PY) -m http.server $(PORT) --bind 127.0.0.1 --directory _build/html

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf _build tests/artifacts
