# Two commands do all set-up on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_WORKDIR ?= workdirs/demo

.PHONY: demo test venv data clean-venv

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Real Fashion-MNIST, offline: Debian's package installs the original IDX files.
data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)); \
	  else \
	    echo "Fashion-MNIST IDX files missing in $(FMNIST_DIR): run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; \
	  fi; \
	fi

demo: venv data
	$(PY) experiments/demo.py --workdir=$(DEMO_WORKDIR)

# Two workers, stealing work from each other (measured 11.5 min vs 15 min with the default
# distribution): the suite is dominated by single-threaded XLA compiles.
test: venv data
	$(PY) -m pytest -q -n 2 --dist worksteal tests

clean-venv:
	rm -rf $(VENV)
