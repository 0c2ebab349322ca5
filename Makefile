# Two commands: `make demo` (venv + install + dvc repro) and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# Images for Kubeflow (see docker/ and components/images.py) and the team MLflow server.
REGISTRY ?= ghcr.io/acgan-pipeline
VERSION  := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
TAG      ?= $(VERSION)

export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test lint install images lock clean-outputs screenshots

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# constraints pin every transitive dependency: a fast, reproducible install
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e ".[dev]"
	touch $@

demo: $(STAMP)
	dvc repro
	@echo ""
	@echo "Done. Results:"
	@echo "  data/ingested/manifest.json   the ingested dataset (Parquet shards)"
	@echo "  data/splits/splits.json       the class split plan + real-image MS-SSIM"
	@echo "  models/split_*/               one generator per split (samples.png, history.json)"
	@echo "  reports/monitor/report.html   the collapse monitor's verdict per split and class"
	@echo "  reports/eval/report.html      the evaluation: gate, figures, sample grids"
	@echo "  dvc metrics show              the headline figures;  dvc plots show: the charts"
	@echo ""
	@echo "MLflow:  $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db    then open"
	@$(BIN)/python -c 'import json; r = json.load(open("reports/register/registration.json")); [print(f"  {k:18} {v}") for k, v in (r.get("links") or {}).items() if v]' 2>/dev/null || true
	@echo "Images:  $(BIN)/acgan generate --classes 0,1 --n 8 --out generated   (docs/user-guide.md)"

# After `make demo`: the MLflow pages and both reports as PNGs in docs/screenshots (headless
# Chromium; skipped with a message where there is none).
screenshots: $(STAMP)
	$(BIN)/python scripts/screenshots.py --repo . --out docs/screenshots

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Build and push the images (`make images REGISTRY=my.registry/me TAG=dev`); the components
# default to $(REGISTRY)/acgan-{trainer,step}:$(TAG) as set in components/images.py;
# acgan-mlflow is the tracking server (mlflow + the PostgreSQL driver + boto3).
images:
	docker build -f docker/Dockerfile.cuda --build-arg ACGAN_VERSION=$(VERSION) \
		-t $(REGISTRY)/acgan-trainer:$(TAG) .
	docker build -f docker/Dockerfile --build-arg ACGAN_VERSION=$(VERSION) \
		-t $(REGISTRY)/acgan-step:$(TAG) .
	docker build -f docker/Dockerfile.mlflow --build-arg ACGAN_VERSION=$(VERSION) \
		-t $(REGISTRY)/acgan-mlflow:$(TAG) .
	docker push $(REGISTRY)/acgan-trainer:$(TAG)
	docker push $(REGISTRY)/acgan-step:$(TAG)
	docker push $(REGISTRY)/acgan-mlflow:$(TAG)

lock:
	# regenerate the constraints from a clean resolution (slow: minutes of backtracking)
	rm -rf /tmp/acgan-lock && $(PY) -m venv /tmp/acgan-lock
	/tmp/acgan-lock/bin/pip install --quiet "torch==2.14.1" "torchvision==0.29.1" -e ".[dev]"
	/tmp/acgan-lock/bin/pip freeze --exclude-editable | grep -v '^acgan' > requirements/constraints.txt

clean-outputs:
	rm -rf data/ingested data/splits models judge reports checkpoints mlflow.db mlruns mlartifacts dvc.lock
