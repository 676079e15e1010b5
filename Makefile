PYTHON ?= python
DATA ?= $(or $(BLOODCELL_DATA),../shared/data/pbc)

.PHONY: install test test-fast bench clean

install:
	$(PYTHON) -m pip install -e ".[dev]"

test:
	$(PYTHON) -m pytest -q -p no:cacheprovider

test-fast:
	$(PYTHON) -m pytest -q -m "not integration and not browser"

bench:
	$(PYTHON) benchmarks/data_pipeline.py --data $(DATA)

clean:
	rm -rf .cache runs reports benchmarks/results .pytest_cache
