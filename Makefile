# lang3d: language and images for point-cloud models.
#   make install               virtual environment + MinkowskiEngine (cached wheel after the first build)
#   make test                  the test suite (CPU; what CI runs; tests marked slow left out)
#   make test-fast             the unit and reference tests (about 1.5 min on 2 cores): no CLI runs, DDP,
#                              kill/resume, learning or shipped-config tests
#   make test-full             the whole suite, slow tests included (every config at its shipped batch size)
#   make check-learning        every learning test at seeds 0-2 and at 1 and 2 threads (long)
#   make pretrain-text4point   Text4Point pre-training; SCANNET=/path/to/scannet for real data,
#                              otherwise a demo on built-in synthetic ScanNet scenes
#   make finetune-s3dis        Text4Point fine-tuning on S3DIS; S3DIS=/path/to/s3dis CKPT=/path/to/pretrain.ckpt,
#                              otherwise a demo on built-in synthetic rooms (with the pre-training demo's checkpoint
#                              when there is one)
#   make finetune-s3dis-ins    Text4Point instance segmentation on S3DIS (PointGroup-style head); same S3DIS= / CKPT=
#   make finetune-scannet-det  Text4Point VoteNet detection on ScanNet; SCANNET_DET=/path/to/votenet/scannet CKPT=...,
#                              otherwise a demo on built-in synthetic scans in VoteNet's format
#   make finetune-sunrgbd-det  the same on SUN RGB-D; SUNRGBD=/path/to/votenet/sunrgbd CKPT=...
#   make sepe                  SEPE fine-tuning of Point-E (configs/sepe.yaml: built-in Cap3D-format data and tiny
#                              models as shipped; see its header for a real run), ARGS=... for overrides
#   make pointbind             Point-Bind alignment then ModelNet40 zero-shot test; CAP3D=/path MODELNET40=/path for
#                              real data, otherwise a demo on built-in synthetic objects (tiny random CLIP)
#   make pointbind-audio       Point-Bind audio -> 3D retrieval on ESC-50 (ImageBind's space, the released model);
#                              ESC50=/path MODELNET40=/path for real data, otherwise a demo on built-in synthetic
#                              sounds and shapes (tiny random towers), then retrieval / arithmetic on given files
#   make demo                  every pipeline briefly on built-in synthetic data (pre-train -> fine-tune, Point-Bind
#                              -> zero-shot, Point-Bind audio, SEPE -> sample), all logging under runs/
#   make benchmark (or bench)  every script in benchmarks/, then one summary table in runs/benchmarks/summary.md
#   make gpu-bundle            the folder gpu-bundle/ the GPU machine's check installs from (MinkowskiEngine CUDA
#                              wheel, the wheels that machine lacks, OpenBLAS); at most 40 MiB
#   make gpu-rehearsal         the GPU check here, in an environment of only what the GPU machine has, index off
#   make gpu-check             on the GPU machine (no network): installs gpu-bundle/, the CUDA-vs-CPU tests, the GPU
#                              benchmarks, a summary (scripts/gpu_check.sh; figures in runs/gpu_check/ or $OUT)
#   make check-cuda-build      compile MinkowskiEngine's CUDA extension on any machine (no GPU; long)

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lang3d-installed
SCANNET ?=
SYNTHETIC_SCANNET ?= data/synthetic/scannet
DEMO_CLIP := $(SYNTHETIC_SCANNET)/demo_clip_rn.pt
S3DIS ?=
SYNTHETIC_S3DIS ?= data/synthetic/s3dis
CKPT ?=
DEMO_PRETRAIN_CKPT := runs/text4point_pretrain_demo/checkpoints/last.ckpt
CAP3D ?=
MODELNET40 ?=
SYNTHETIC_MODELNET40 ?= data/synthetic/modelnet40
ESC50 ?=
SYNTHETIC_ESC50 ?= data/synthetic/esc50
SCANNET_DET ?=
SYNTHETIC_SCANNET_DET ?= data/synthetic/scannet_detection
SUNRGBD ?=
SYNTHETIC_SUNRGBD ?= data/synthetic/sunrgbd
ARGS ?=

.PHONY: install test test-fast test-full check-learning pretrain-text4point finetune-s3dis finetune-s3dis-ins finetune-scannet-det finetune-sunrgbd-det sepe pointbind pointbind-audio demo benchmark bench synthetic-scannet synthetic-s3dis clean-venv gpu-bundle gpu-rehearsal gpu-check check-cuda-build

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt setup.cfg scripts/install_env.sh scripts/build_minkowski.py
	VENV=$(VENV) bash scripts/install_env.sh

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not ddp and not learning and not integration"

test-full: $(STAMP)
	$(PY) -m pytest -m "slow or not slow"

check-learning: $(STAMP)
	VENV=$(VENV) bash scripts/check_learning_tests.sh

$(SYNTHETIC_SCANNET)/scannetv2_train.txt: | $(STAMP)
	$(PY) -m datamodules.synthetic.scannet --out $(SYNTHETIC_SCANNET) --scenes 16 --frames 10 --val-fraction 0.25

$(DEMO_CLIP): $(SYNTHETIC_SCANNET)/scannetv2_train.txt
	$(PY) -m datamodules.synthetic.demo_clip --scannet $(SYNTHETIC_SCANNET) --out $@

synthetic-scannet: $(SYNTHETIC_SCANNET)/scannetv2_train.txt

# The demo's tensors are small: one thread per process (unless OMP_NUM_THREADS says otherwise). On 2 cores beside
# other jobs, two threads waiting on each other for the cores made its steps about ten times slower.
ifeq ($(strip $(SCANNET)),)
pretrain-text4point: $(STAMP) $(DEMO_CLIP)
	@echo "No ScanNet given (make pretrain-text4point SCANNET=/path/to/scannet): running the demo on built-in"
	@echo "synthetic scenes in $(SYNTHETIC_SCANNET) with a tiny stand-in for pretrained CLIP ($(DEMO_CLIP))."
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m lang3d fit -c configs/text4point/pretrain_scannet.yaml \
		-c configs/text4point/demo_synthetic.yaml --data.root $(SYNTHETIC_SCANNET) \
		--model.clip_pretrained $(DEMO_CLIP) $(ARGS)
else
pretrain-text4point: $(STAMP)
	$(PY) -m lang3d fit -c configs/text4point/pretrain_scannet.yaml --data.root $(SCANNET) $(ARGS)
endif

$(SYNTHETIC_S3DIS)/Stanford3dDataset_v1.2_Aligned_Version: | $(STAMP)
	$(PY) -m datamodules.synthetic.s3dis --out $(SYNTHETIC_S3DIS) --rooms-per-area 3 --points-per-room 8000

synthetic-s3dis: $(SYNTHETIC_S3DIS)/Stanford3dDataset_v1.2_Aligned_Version

# $(call finetune_demo,<config>,<demo overlay>,<data root>) (configs/text4point/*.yaml): fine-tune from CKPT, else from
# the pre-training demo's checkpoint when there is one, else from scratch.
# $(call finetune,<config>,<data root>): fine-tune on real data from CKPT (or from scratch without it).
define finetune
	$(PY) -m lang3d fit -c configs/text4point/$(1).yaml --data.root $(2) --model.pretrained "$(if $(CKPT),$(CKPT),null)" \
		$(ARGS)
endef

define finetune_demo
	@ckpt="$(CKPT)"; if [ -z "$$ckpt" ] && [ -f $(DEMO_PRETRAIN_CKPT) ]; then ckpt=$(DEMO_PRETRAIN_CKPT); fi; \
	if [ -n "$$ckpt" ]; then echo "initialising from $$ckpt"; else echo "no pre-training checkpoint: from scratch"; fi; \
	$(PY) -m lang3d fit -c configs/text4point/$(1).yaml -c configs/text4point/$(2).yaml --data.root $(3) \
		--model.pretrained "$${ckpt:-null}" $(ARGS)
endef

ifeq ($(strip $(S3DIS)),)
finetune-s3dis: $(STAMP) $(SYNTHETIC_S3DIS)/Stanford3dDataset_v1.2_Aligned_Version
	@echo "No S3DIS given (make finetune-s3dis S3DIS=/path CKPT=/path/to/pretrain.ckpt): running the demo on built-in"
	@echo "synthetic rooms in $(SYNTHETIC_S3DIS) with the tiny CLIP of the pre-training demo."
	$(call finetune_demo,finetune_s3dis,demo_synthetic_s3dis,$(SYNTHETIC_S3DIS))
else
finetune-s3dis: $(STAMP)
	$(call finetune,finetune_s3dis,$(S3DIS))
endif

ifeq ($(strip $(S3DIS)),)
finetune-s3dis-ins: $(STAMP) $(SYNTHETIC_S3DIS)/Stanford3dDataset_v1.2_Aligned_Version
	@echo "No S3DIS given (make finetune-s3dis-ins S3DIS=/path CKPT=/path/to/pretrain.ckpt): instance segmentation"
	@echo "demo on built-in synthetic rooms in $(SYNTHETIC_S3DIS) with the tiny CLIP of the pre-training demo."
	$(call finetune_demo,instance_s3dis,demo_synthetic_s3dis_ins,$(SYNTHETIC_S3DIS))
	$(PY) -m lang3d test -c configs/text4point/instance_s3dis.yaml -c configs/text4point/demo_synthetic_s3dis_ins.yaml \
		--data.root $(SYNTHETIC_S3DIS) --ckpt_path runs/text4point_s3dis_ins_demo/checkpoints/last.ckpt
else
finetune-s3dis-ins: $(STAMP)
	$(call finetune,instance_s3dis,$(S3DIS))
endif

$(SYNTHETIC_SCANNET_DET)/meta_data/scannetv2_train.txt: | $(STAMP)
	$(PY) -m datamodules.synthetic.scannet_detection --out $(SYNTHETIC_SCANNET_DET) --scenes 6 --points 20000

$(SYNTHETIC_SUNRGBD)/sunrgbd_trainval/train_data_idx.txt: | $(STAMP)
	$(PY) -m datamodules.synthetic.sunrgbd --out $(SYNTHETIC_SUNRGBD) --train 4 --val 2 --points 20000

ifeq ($(strip $(SCANNET_DET)),)
finetune-scannet-det: $(STAMP) $(SYNTHETIC_SCANNET_DET)/meta_data/scannetv2_train.txt
	@echo "No SCANNET_DET given (make finetune-scannet-det SCANNET_DET=/path/to/votenet/scannet CKPT=...): detection"
	@echo "demo on built-in synthetic scans in VoteNet's format in $(SYNTHETIC_SCANNET_DET), tiny CLIP."
	$(call finetune_demo,detection_scannet,demo_synthetic_scannet_det,$(SYNTHETIC_SCANNET_DET))
else
finetune-scannet-det: $(STAMP)
	$(call finetune,detection_scannet,$(SCANNET_DET))
endif

ifeq ($(strip $(SUNRGBD)),)
finetune-sunrgbd-det: $(STAMP) $(SYNTHETIC_SUNRGBD)/sunrgbd_trainval/train_data_idx.txt
	@echo "No SUNRGBD given (make finetune-sunrgbd-det SUNRGBD=/path/to/votenet/sunrgbd CKPT=...): detection demo"
	@echo "on built-in synthetic samples in VoteNet's format in $(SYNTHETIC_SUNRGBD), tiny CLIP."
	$(call finetune_demo,detection_sunrgbd,demo_synthetic_sunrgbd_det,$(SYNTHETIC_SUNRGBD))
else
finetune-sunrgbd-det: $(STAMP)
	$(call finetune,detection_sunrgbd,$(SUNRGBD))
endif

sepe: $(STAMP)
	$(PY) -m lang3d fit -c configs/sepe.yaml $(ARGS)

$(SYNTHETIC_MODELNET40)/modelnet40_normal_resampled: | $(STAMP)
	$(PY) -m datamodules.synthetic.modelnet40 --out $(SYNTHETIC_MODELNET40) --points 2048

ifeq ($(strip $(CAP3D)$(MODELNET40)),)
pointbind: $(STAMP) $(SYNTHETIC_MODELNET40)/modelnet40_normal_resampled
	@echo "No CAP3D / MODELNET40 given: Point-Bind demo on built-in synthetic objects with a tiny random CLIP."
	$(PY) -m lang3d fit -c configs/pointbind.yaml -c configs/pointbind_demo.yaml $(ARGS)
	$(PY) -m lang3d test -c configs/pointbind_zeroshot.yaml -c configs/pointbind_zeroshot_demo.yaml \
		--ckpt_path runs/pointbind_demo/checkpoints/last.ckpt
else
pointbind: $(STAMP)
	$(PY) -m lang3d fit -c configs/pointbind.yaml --data.init_args.alignment.init_args.root $(CAP3D) \
		--data.init_args.zeroshot.init_args.root $(MODELNET40) $(ARGS)
	$(PY) -m lang3d test -c configs/pointbind_zeroshot.yaml --data.root $(MODELNET40) \
		--ckpt_path runs/pointbind/checkpoints/last.ckpt
endif

$(SYNTHETIC_ESC50)/meta/esc50.csv: | $(STAMP)
	$(PY) -m datamodules.synthetic.esc50 --out $(SYNTHETIC_ESC50) --clips-per-class 2 --sample-rate 16000

POINTBIND_ESC50 := -c configs/pointbind_zeroshot.yaml -c configs/pointbind_imagebind.yaml \
	-c configs/pointbind_esc50.yaml
ifeq ($(strip $(ESC50)$(MODELNET40)),)
pointbind-audio: $(STAMP) $(SYNTHETIC_MODELNET40)/modelnet40_normal_resampled $(SYNTHETIC_ESC50)/meta/esc50.csv
	@echo "No ESC50 / MODELNET40 given: Point-Bind audio demo on built-in synthetic sounds and shapes, tiny random towers."
	$(PY) -m lang3d test $(POINTBIND_ESC50) -c configs/pointbind_esc50_demo.yaml $(ARGS)
	$(PY) -m lang3d predict -c configs/pointbind.yaml -c configs/pointbind_imagebind.yaml \
		-c configs/pointbind_audio.yaml -c configs/pointbind_audio_demo.yaml
else
pointbind-audio: $(STAMP)
	$(PY) -m lang3d test $(POINTBIND_ESC50) --data.init_args.gallery.init_args.root $(MODELNET40) \
		--data.init_args.queries.init_args.root $(ESC50) $(ARGS)
endif

demo: $(STAMP)
	$(MAKE) pretrain-text4point SCANNET=
	$(MAKE) finetune-s3dis S3DIS= CKPT=
	$(MAKE) pointbind CAP3D= MODELNET40=
	$(MAKE) pointbind-audio ESC50= MODELNET40=
	$(MAKE) sepe
	$(PY) -m lang3d predict -c configs/sepe_sample.yaml \
		--ckpt_path runs/sepe/checkpoints/last.ckpt --data.steps 16
	@echo "Demo done. TensorBoard: $(VENV)/bin/tensorboard --logdir runs   (generated clouds: runs/sepe/samples)"

BENCH_DIR ?= runs/benchmarks

benchmark: $(STAMP)
	rm -f $(BENCH_DIR)/figures.jsonl && mkdir -p $(BENCH_DIR)
	LANG3D_BENCH_RECORD=$(BENCH_DIR)/figures.jsonl $(PY) benchmarks/text4point_pretrain.py
	LANG3D_BENCH_RECORD=$(BENCH_DIR)/figures.jsonl $(PY) benchmarks/data_loaders.py
	LANG3D_BENCH_RECORD=$(BENCH_DIR)/figures.jsonl $(PY) benchmarks/text4point_s3dis.py
	LANG3D_BENCH_RECORD=$(BENCH_DIR)/figures.jsonl $(PY) benchmarks/text4point_detection.py
	LANG3D_BENCH_RECORD=$(BENCH_DIR)/figures.jsonl $(PY) benchmarks/point_e_speed.py
	LANG3D_BENCH_RECORD=$(BENCH_DIR)/figures.jsonl $(PY) benchmarks/pointbind_speed.py
	$(PY) benchmarks/summary.py $(BENCH_DIR)/figures.jsonl $(BENCH_DIR)/summary.md

bench: benchmark

gpu-bundle: $(STAMP)
	$(PY) scripts/gpu_bundle.py

gpu-rehearsal: gpu-bundle
	bash scripts/gpu_rehearsal.sh

gpu-check:
	bash scripts/gpu_check.sh

check-cuda-build: $(STAMP)
	VENV=$(VENV) bash scripts/check_cuda_build.sh

clean-venv:
	rm -rf $(VENV)
