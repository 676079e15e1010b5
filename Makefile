PYTHON ?= python
DATA ?= $(or $(BLOODCELL_DATA),../shared/data/pbc)
SPLIT ?= runs/pbc_split.csv
DEFAULT_RUN ?= runs/default
# The default model is a soft-voting ensemble of EfficientNet-Lite0 members that differ only in
# their seed, trained side by side on one thread each (two members fill the two cores). What each
# pipeline trains is spelled out once, in bloodcell/pipelines/spec.py; a variable left empty here
# keeps the spec's value (e.g. `make train-default DEFAULT_SEEDS="0 1 2"` overrides the seeds).
DEFAULT_SEEDS ?=
DEFAULT_PACKAGE ?= src/bloodcell/default_model

.PHONY: install lint test test-fast bench train-default zoo zoo-table clean

install:
	$(PYTHON) -m pip install -e ".[dev]"

lint:
	$(PYTHON) -m ruff check .

test:
	$(PYTHON) -m pytest -q -p no:cacheprovider --durations=15

test-fast:
	$(PYTHON) -m pytest -q -p no:cacheprovider -m "not integration and not browser"

bench:
	$(PYTHON) benchmarks/data_pipeline.py --data $(DATA)
	$(PYTHON) benchmarks/inference.py
	$(PYTHON) benchmarks/train_speed.py --quick

$(SPLIT):
	$(PYTHON) -m bloodcell split $(DATA) -o $(SPLIT)

# The packaged default model, end to end (bloodcell.pipelines, `bloodcell pipeline default`): train the
# members side by side on one thread each (resumable: rerun after a stop; logs in $(DEFAULT_RUN)/*.log),
# calibrate each on val, combine, calibrate the ensemble (plain and TTA), evaluate once on test, package.
train-default: $(SPLIT)
	$(PYTHON) -m bloodcell pipeline default --data $(SPLIT) --default-run $(DEFAULT_RUN) --package $(DEFAULT_PACKAGE) $(SPEC_ARGS) --train-args "$(TRAIN_ARGS)"

# The model zoo at a CPU-feasible size (`bloodcell pipeline zoo`): every study CNN and the
# three-architecture ensemble (EfficientNet-B3, MobileNetV2, ResNet-50 from scratch: no offline ImageNet
# weights for them), one thread per member; every model calibrated. Resumable: rerun after a stop.
# ZOO_JOBS=1 trains one member at a time, so the zoo can share the machine with train-default.
ZOO_DIR ?= runs/zoo
ZOO_CPU ?=
ZOO_STUDY ?=
ZOO_ENSEMBLE_EPOCHS ?=
ZOO_JOBS ?= 1
SPEC_ARGS = $(if $(DEFAULT_SEEDS),--seeds $(DEFAULT_SEEDS)) $(if $(ZOO_STUDY),--study $(ZOO_STUDY)) \
	$(if $(ZOO_ENSEMBLE_EPOCHS),--ensemble-epochs $(ZOO_ENSEMBLE_EPOCHS)) $(if $(ZOO_CPU),--zoo-args "$(ZOO_CPU)")

zoo: $(SPLIT)
	$(PYTHON) -m bloodcell pipeline zoo --data $(SPLIT) --zoo-run $(ZOO_DIR) $(SPEC_ARGS) --train-args "$(TRAIN_ARGS)" --jobs $(ZOO_JOBS)

# The README's model-zoo table: every zoo model, each pretrained EfficientNet-Lite0 member of the
# default model alone, and the default ensemble (plain, and with TTA as `make train-default`
# evaluated it), on the test split.
zoo-table:
	$(PYTHON) -m bloodcell pipeline zoo-table --data $(SPLIT) --zoo-run $(ZOO_DIR) --default-run $(DEFAULT_RUN) $(SPEC_ARGS) --report reports/zoo

clean:
	rm -rf .cache runs reports benchmarks/results .pytest_cache
