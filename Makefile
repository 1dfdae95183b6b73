# Two commands set up and run everything on a fresh machine:
#   make demo   create .venv, install, run the main job on the embedded digits dataset
#   make test   create .venv, install the test extras, run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench clean

# Bytecode: pip installs without compiling it, and the commands below write the bytecode of
# what they import on first import, even where PYTHONDONTWRITEBYTECODE=1 is set (as on the
# 2-core VM; without bytecode every process compiles the libraries' sources again: importing
# what the tests import took 16-26 s against 9-10 s). Only what is imported is compiled:
# 3,210 files, ~8 s once, where `compileall` of the whole of site-packages took 27 s (13,153).
RUN := env -u PYTHONDONTWRITEBYTECODE $(PY)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -e '.[test]'
	touch $@

$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

demo: $(VENV)/.installed
	$(RUN) -m experiments.ncg --dataset=digitswo9 --model=cnn002

test: $(VENV)/.installed
	$(RUN) -m pytest -n 2 -q tests

bench: $(VENV)/.bench
	$(RUN) -m benchmarks.cnn002

clean:
	rm -rf $(VENV) workdir
