PYTHON ?= python
DATA ?= $(or $(BLOODCELL_DATA),../shared/data/pbc)
SPLIT ?= runs/pbc_split.csv
DEFAULT_RUN ?= runs/default_lite0_128

.PHONY: install test test-fast bench train-default clean

install:
	$(PYTHON) -m pip install -e ".[dev]"

test:
	$(PYTHON) -m pytest -q -p no:cacheprovider

test-fast:
	$(PYTHON) -m pytest -q -p no:cacheprovider -m "not integration and not browser"

bench:
	$(PYTHON) benchmarks/data_pipeline.py --data $(DATA)
	$(PYTHON) benchmarks/inference.py
	$(PYTHON) benchmarks/train_speed.py --quick

$(SPLIT):
	$(PYTHON) -m bloodcell split $(DATA) -o $(SPLIT)

# The packaged default model, end to end: split, train, calibrate on val, evaluate once on test, package.
train-default: $(SPLIT)
	$(PYTHON) -m bloodcell train --recipe default --data $(SPLIT) --out $(DEFAULT_RUN) --threads 1 $(TRAIN_ARGS) \
		|| $(PYTHON) -m bloodcell train --resume $(DEFAULT_RUN) --threads 1
	$(PYTHON) -m bloodcell calibrate $(DEFAULT_RUN) $(SPLIT) --tta
	$(PYTHON) -m bloodcell evaluate $(DEFAULT_RUN) $(SPLIT) --split test --tta -o $(DEFAULT_RUN)/test_metrics.json
	$(PYTHON) -m bloodcell export $(DEFAULT_RUN) --format default --data $(SPLIT) --card cards/default.yaml --half-weights

clean:
	rm -rf .cache runs reports benchmarks/results .pytest_cache
