# napari-sam developer commands.  `make demo` runs the main job, `make test` the test suite.
# Both create ./.venv on first use (pinned CPU torch first, then the package).
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: env demo test test-fast quality lint bench docs docs-screens clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==$(TORCH_VERSION)
	$(VPY) -m pip install -q -e ".[napari,test,lint,docs]"
	touch $@

env: $(VENV)/.installed

# X server for the GUI tests (napari needs a real one; offscreen cannot render the canvas).
xvfb:
	@command -v xvfb-run >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0 libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-randr0 libxcb-xfixes0 libgl1 libegl1 libfontconfig1 libdbus-1-3 >/dev/null; }

demo: env
	$(VPY) -m napari_sam.cli demo --out out/demo

test: env xvfb
	xvfb-run -a -s "-screen 0 1280x1024x24" $(VPY) -m pytest -ra

# ruff and the import-linter contracts of pyproject.toml (the data path flows one way; core has no napari/Qt)
lint: env
	$(VENV)/bin/ruff check src tests scripts benchmarks
	$(VENV)/bin/lint-imports

test-fast: env
	$(VPY) -m pytest -ra -m "not gui and not slow"

# model-quality checks with tolerance bands measured on one model (benchmarks/quality/README.md)
quality: env
	$(VPY) -m pytest benchmarks/quality $(QUALITY_ARGS)

bench: env
	$(VPY) benchmarks/predictor.py
	$(VPY) benchmarks/amg.py
	$(VPY) benchmarks/batch.py --shape 8 1024 1024 --model-seconds 0.5

# the user docs and the API reference generated from the docstrings (mkdocs.yml); warnings are errors
docs: env
	$(VPY) -m mkdocs build --strict -d out/site

docs-screens: env xvfb
	xvfb-run -a -s "-screen 0 1400x1000x24" $(VPY) scripts/make_screenshots.py

clean:
	rm -rf $(VENV) out build dist
