# Two commands do everything on a fresh machine: `make demo` and `make test` (each installs first).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): setup.py pyproject.toml scripts/install.sh custom_dmc2gym/setup.py custom_dmcontrol/setup.py
	bash scripts/install.sh $(VENV)
	touch $@

demo: install
	$(PY) train_QPA.py +preset=quick env=walker_walk hydra.run.dir=exp/demo/walker_walk_quick_seed1
	$(PY) -m plot curves exp/demo --x both --out figure/demo_walker_walk.png

test: install
	$(PY) -m pytest tests -q -n auto

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) bench/bench_components.py
	$(PY) bench/bench_train.py

clean:
	rm -rf $(VENV) exp outputs multirun
