# The README's two commands: `make demo` and `make test`. Both set up .venv when it is missing.
# TORCH_SPEC is overridable: the local CPU wheel here, a CUDA build in the GPU image.
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed
OUT        ?= out
PORT       ?= 8000

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup demo test bench learn-check manifests clean

setup: $(STAMP)

# torch first, alone: any other spec (or a package asking for a newer torch) pulls GBs of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[model,curation,serve,test]"
	scripts/install_promtool.sh $(VENV)/bin
	touch $(STAMP)

# The whole local flow: synthetic data -> tiny training -> Ray Serve -> HTTP request -> out/demo.mp4.
demo: $(STAMP)
	BIN=$(VENV)/bin OUT=$(OUT) PORT=$(PORT) scripts/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m benchmarks.run

# CPU check that subject conditioning learns (23 min on 2 cores): README "Learning check (CPU)".
learn-check: $(STAMP)
	$(PY) -m polyvivid.experiments.learn_check --out $(OUT)/learn-check.json

# After changing polyvivid/api or the chart: the CRDs (manifests/ and the chart's copy) and install.yaml.
manifests: $(STAMP)
	$(VENV)/bin/polyvivid crds --out manifests/crds
	$(VENV)/bin/polyvivid crds --out charts/polyvivid-operator/crds
	$(PY) scripts/render_install.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
