# Two commands set up and run everything on a fresh machine:
#   make demo   create .venv, install, run the main job on the embedded digits dataset
#   make test   create .venv, install the test extras, run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m experiments.ncg --dataset=digitswo9 --model=cnn002

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 -q tests

bench: $(VENV)/.bench
	$(PY) -m benchmarks.cnn002

clean:
	rm -rf $(VENV) workdir
