# Two commands for a new user: `make repro` (the pipeline) and `make test` (the suite). Both create .venv first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install install-cpu repro test test-slow params search-examples scale bench-search bench-backbones bench-serve serve-screenshot mlflow-ui mlflow-screenshot clean-venv

install: $(INSTALLED)

# Re-install whenever pyproject.toml changes; torch and torchvision are capped at 2.14.1 / 0.29.1 by pyproject.
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# A CPU-only environment, about a third of the size: torch's CPU wheels carry no CUDA libraries (the default wheels
# bring 3.2 GB of nvidia-* and 0.9 GB of triton). Needs the PyTorch wheel index; run it before `make repro`/`test`.
TORCH_CPU ?= torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu
install-cpu:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_CPU)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(INSTALLED)

repro: $(INSTALLED)  ## run the whole pipeline from params.yaml (dvc repro)
	dvc repro

test: $(INSTALLED)  ## the CI suite: unit, integration (../shared) and end-to-end tests, without the slow ones
	python -m pytest -m "not slow" -q

test-slow: $(INSTALLED)  ## the long real-data runs
	python -m pytest -m slow -q

params: $(INSTALLED)  ## recompose params.yaml from conf/ (add overrides with ARGS="backbone=resnet50")
	ris compose $(ARGS)

EXAMPLES := outputs/examples
search-examples: $(INSTALLED)  ## after `make repro`: result grids for three outside photos (scikit-image's samples)
	python -c "import pathlib, skimage.data as d; from PIL import Image; out = pathlib.Path('$(EXAMPLES)'); \
	out.mkdir(parents=True, exist_ok=True); \
	[Image.fromarray(getattr(d, n)()).save(out / f'{n}.jpg', quality=92) for n in ('astronaut', 'coffee', 'chelsea')]"
	mkdir -p reports/search
	ris search $(EXAMPLES) -k 10 --grid-dir reports/search --json > reports/search/results.json.partial
	mv reports/search/results.json.partial reports/search/results.json

scale: $(INSTALLED)  ## after `make repro`: per-image cost of every stage here, and a million images' (reports/scale.json)
	python -m ris.scale

bench-search: $(INSTALLED)  ## after `make repro`: every index family at Caltech101 scale and at 1M vectors -> reports/bench/search/
	ris bench search --scale caltech
	ris bench search --scale million

serve-screenshot: $(INSTALLED)  ## after `make search-examples`: the web page in chromium searching a cat photo -> reports/serve/
	mkdir -p reports/serve
	python tests/browser.py $(EXAMPLES)/chelsea.jpg reports/serve/page.png

bench-serve: $(INSTALLED)  ## after `make repro`: POST /search under load on loopback -> reports/bench/serve/cpu.json
	ris bench serve

bench-backbones: $(INSTALLED)  ## every configured backbone's size, GFLOPs and forward speed here -> reports/bench/backbones/
	ris bench backbones

mlflow-ui: $(INSTALLED)  ## browse every tracked run at http://127.0.0.1:5000
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

mlflow-screenshot: $(INSTALLED)  ## after a `ris run -m` sweep: reports/mlflow/sweep.png, its runs table in the MLflow UI
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5099 & server=$$!; \
	until curl -sf http://127.0.0.1:5099/health >/dev/null; do sleep 1; done; \
	mkdir -p reports/mlflow; (cd tests && python mlflow_ui.py http://127.0.0.1:5099 ../reports/mlflow/sweep.png); \
	status=$$?; kill $$server; exit $$status

clean-venv:
	rm -rf $(VENV)
