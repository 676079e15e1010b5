PYTHON ?= python
DATA ?= $(or $(BLOODCELL_DATA),../shared/data/pbc)
SPLIT ?= runs/pbc_split.csv
DEFAULT_RUN ?= runs/default
# The default model is a soft-voting ensemble of EfficientNet-Lite0 members that differ only in
# their seed, trained side by side on one thread each (two members fill the two cores).
DEFAULT_SEEDS ?= 0 1
DEFAULT_PACKAGE ?= src/bloodcell/default_model
DEFAULT_MEMBERS = $(foreach s,$(DEFAULT_SEEDS),$(DEFAULT_RUN)/lite0_seed$(s))

.PHONY: install test test-fast bench train-default zoo zoo-table clean

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

# The packaged default model, end to end: split, train the members in parallel (resumable: rerun
# after a stop; logs in $(DEFAULT_RUN)/*.log), calibrate each on val, combine, calibrate the ensemble
# (plain and TTA), evaluate once on test, package.
train-default: $(SPLIT)
	@mkdir -p $(DEFAULT_RUN); set -e; pids=""; for m in $(DEFAULT_MEMBERS); do \
		if grep -Eqs '"stopped": *"(completed|early_stopping)"' $$m/model.json; then echo "$$m: trained"; continue; fi; \
		seed=$${m##*_seed}; \
		if [ -d $$m ]; then args="--resume $$m"; else args="--recipe default --data $(SPLIT) --out $$m --seed $$seed $(TRAIN_ARGS)"; fi; \
		echo "training $$m (log: $$m.log)"; \
		$(PYTHON) -m bloodcell train $$args --threads 1 --no-progress >> $$m.log 2>&1 & pids="$$pids $$!:$$m"; done; \
		failed=0; for p in $$pids; do if ! wait $${p%%:*}; then echo "$${p#*:} failed; its log:"; tail -n 20 $${p#*:}.log; failed=1; fi; done; \
		exit $$failed
	@set -e; for m in $(DEFAULT_MEMBERS); do $(PYTHON) -m bloodcell calibrate $$m $(SPLIT) --quiet; done
	$(PYTHON) -m bloodcell ensemble $(DEFAULT_MEMBERS) -o $(DEFAULT_RUN)/ensemble --force
	$(PYTHON) -m bloodcell calibrate $(DEFAULT_RUN)/ensemble $(SPLIT) --tta
	$(PYTHON) -m bloodcell evaluate $(DEFAULT_RUN)/ensemble $(SPLIT) --split test --tta -o $(DEFAULT_RUN)/test_metrics.json
	$(PYTHON) -m bloodcell export $(DEFAULT_RUN)/ensemble --format default -o $(DEFAULT_PACKAGE) --data $(SPLIT) --card cards/default.yaml \
		--metrics $(DEFAULT_RUN)/test_metrics.json --half-weights

# The model zoo at a CPU-feasible size: every study CNN and the three-architecture ensemble
# (EfficientNet-B3, MobileNetV2, ResNet-50 from scratch: no offline ImageNet weights for them),
# one thread each so it can share the machine with train-default. Resumable: rerun after a stop.
ZOO_DIR ?= runs/zoo
ZOO_CPU ?= --image-size 64 --crop-fraction 0.7 --batch-size 32 --schedule cosine --warmup-epochs 0.3 --threads 1 --no-progress
ZOO_STUDY ?= basic_cnn:10 basic_cnn_augmented:10 complex_cnn:8 enhanced_cnn:8
ZOO_ENSEMBLE_EPOCHS ?= 4

zoo: $(SPLIT)
	@set -e; for spec in $(ZOO_STUDY); do r=$${spec%%:*}; n=$${spec##*:}; \
		if grep -Eqs '"stopped": *"(completed|early_stopping)"' $(ZOO_DIR)/$$r/model.json; then echo "$$r: trained"; continue; fi; \
		if [ -d $(ZOO_DIR)/$$r ]; then $(PYTHON) -m bloodcell train --resume $(ZOO_DIR)/$$r --threads 1 --no-progress; \
		else $(PYTHON) -m bloodcell train --recipe $$r --data $(SPLIT) --out $(ZOO_DIR)/$$r --epochs $$n $(ZOO_CPU); fi; done
	@if [ -d $(ZOO_DIR)/ensemble_3arch ]; then $(PYTHON) -m bloodcell train --resume $(ZOO_DIR)/ensemble_3arch --threads 1 --no-progress; \
	else $(PYTHON) -m bloodcell train --recipe ensemble_3arch --data $(SPLIT) --out $(ZOO_DIR)/ensemble_3arch \
		--epochs $(ZOO_ENSEMBLE_EPOCHS) --pretrained false --lr 0.001 $(ZOO_CPU); fi
	@set -e; for m in $(ZOO_DIR)/*/ $(ZOO_DIR)/ensemble_3arch/*/; do if [ -f $$m/model.json ]; then \
		$(PYTHON) -m bloodcell calibrate $$m $(SPLIT) --quiet; fi; done

# The README's model-zoo table: every zoo model, each pretrained EfficientNet-Lite0 member of the
# default model alone, and the default ensemble (plain, and with TTA as `make train-default`
# evaluated it), on the test split.
zoo-table:
	$(PYTHON) -m bloodcell compare $(ZOO_DIR)/basic_cnn $(ZOO_DIR)/basic_cnn_augmented $(ZOO_DIR)/complex_cnn \
		$(ZOO_DIR)/enhanced_cnn $(ZOO_DIR)/ensemble_3arch/efficientnet_b3 $(ZOO_DIR)/ensemble_3arch/mobilenetv2_100 \
		$(ZOO_DIR)/ensemble_3arch/resnet50 $(ZOO_DIR)/ensemble_3arch/ensemble $(DEFAULT_MEMBERS) \
		$(DEFAULT_RUN)/ensemble $(DEFAULT_RUN)/test_metrics.json \
		--data $(SPLIT) --quiet -o reports/zoo

clean:
	rm -rf .cache runs reports benchmarks/results .pytest_cache
