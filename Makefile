# lang3d: language and images for point-cloud models.
#   make install               virtual environment + MinkowskiEngine (cached wheel after the first build)
#   make test                  the test suite (CPU, tiny sizes)
#   make pretrain-text4point   Text4Point pre-training; SCANNET=/path/to/scannet for real data,
#                              otherwise a demo on built-in synthetic ScanNet scenes
#   make benchmark             data-pipeline and model throughput figures

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lang3d-installed
SCANNET ?=
SYNTHETIC_SCANNET ?= data/synthetic/scannet
ARGS ?=

.PHONY: install test pretrain-text4point benchmark synthetic-scannet clean-venv

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt setup.cfg scripts/install_env.sh scripts/build_minkowski.py
	VENV=$(VENV) bash scripts/install_env.sh

test: $(STAMP)
	$(PY) -m pytest

$(SYNTHETIC_SCANNET)/scannetv2_train.txt: | $(STAMP)
	$(PY) -m datamodules.synthetic.scannet --out $(SYNTHETIC_SCANNET) --scenes 3 --frames 40

synthetic-scannet: $(SYNTHETIC_SCANNET)/scannetv2_train.txt

ifeq ($(strip $(SCANNET)),)
pretrain-text4point: $(STAMP) $(SYNTHETIC_SCANNET)/scannetv2_train.txt
	@echo "No ScanNet given (make pretrain-text4point SCANNET=/path/to/scannet): running the demo on built-in"
	@echo "synthetic scenes in $(SYNTHETIC_SCANNET) with a tiny randomly initialised CLIP."
	$(PY) -m lang3d fit -c configs/text4point/pretrain_scannet.yaml -c configs/text4point/demo_synthetic.yaml \
		--data.root $(SYNTHETIC_SCANNET) $(ARGS)
else
pretrain-text4point: $(STAMP)
	$(PY) -m lang3d fit -c configs/text4point/pretrain_scannet.yaml --data.root $(SCANNET) $(ARGS)
endif

benchmark: $(STAMP)
	$(PY) benchmarks/text4point_pretrain.py

clean-venv:
	rm -rf $(VENV)
