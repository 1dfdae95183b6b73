# Two commands set up and run everything on a fresh machine:
#   make demo   create .venv, install, run the main job on the embedded digits dataset
#   make test   create .venv, install the test extras, run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench clean

# pip compiles the installed packages' bytecode on one core; compileall does it on all of them
# (the 2-core VM: 83 s -> 33 + 28 s). A few files compile on no Python this old (torch's 3.12
# test helpers); pip skips those silently, and so does `|| true` here.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -e '.[test]'
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
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
