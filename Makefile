# Two entry points for a fresh machine (Python 3.11, no GPU): `make demo`, `make test`.
PYTHON ?= python3
DEMO ?= demo

.PHONY: install demo test lint

install:
	$(PYTHON) -m pip install --quiet -e ".[train,export,runtime,dev]"

# The main job on built-in data: generate the inspection set, train the tiny preset,
# evaluate it.
demo: install
	rm -rf $(DEMO)
	edgeas synth $(DEMO)/data --per-class 24 --seed 0
	edgeas train --config tiny --data $(DEMO)/data --out $(DEMO)/run --epochs 6
	edgeas eval --checkpoint $(DEMO)/run/last.pt --data $(DEMO)/data --out $(DEMO)/eval

test: install
	$(PYTHON) -m pytest -q

lint:
	ruff check .
