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

# The demo's run, figure and still frame; tests/test_demo.py runs this target at a tiny budget (DEMO_OVERRIDES).
DEMO_RUN ?= exp/demo/walker_walk_quick_seed1
DEMO_FIGURE ?= figure/demo_walker_walk.png
DEMO_STILL ?= figure/demo_walker_walk_last_frame.png
DEMO_OVERRIDES ?=
# The demo has the machine to itself: two torch threads (the preset's one is for runs side by side, as in the
# comparisons), the same on every machine so that the demo is the same run wherever the processor rounds alike.
DEMO_THREADS ?= 2

demo: install
	$(PY) train_QPA.py +preset=quick env=walker_walk save_video=true num_threads=$(DEMO_THREADS) \
		hydra.run.dir=$(DEMO_RUN) $(DEMO_OVERRIDES)
	$(PY) -m plot curves $(DEMO_RUN) --phases --random-baseline --band range --out $(DEMO_FIGURE) \
		--reference figure/reference/compare_quick.csv --reference-methods qpa pebble sac_true
	$(PY) -m plot still $(DEMO_RUN) --out $(DEMO_STILL)
	$(PY) -m plot summary $(DEMO_RUN) --figure $(DEMO_FIGURE) --still $(DEMO_STILL) --after-run \
		--reference figure/reference/compare_quick.csv

test: install
	$(PY) -m pytest tests -q -n auto --durations=30

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) bench/bench_components.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_video.py

clean:
	rm -rf $(VENV) exp outputs multirun
