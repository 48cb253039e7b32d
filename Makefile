# Entry points, each setting up .venv first: `make demo` (the main job), `make test`, and
# `make tiny-models` (tiny random SD and SDXL bases for trying cn-train and cn-sample offline).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# Tests and demos never reach the Hub; torch with 2 threads is erratic on small machines.
export HF_HUB_OFFLINE := 1
export OMP_NUM_THREADS := 1

.PHONY: setup demo test tiny-models

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,ray]'
	touch $@

setup: $(VENV)/.installed

# Annotates the photographs bundled with scikit-image (installed with the package) into ./demo-dataset:
# Parquet shards with image, conditioning_image and text, a dataset card, and a contact sheet.
demo: setup
	$(VENV)/bin/cn-annotate canny "$$($(PY) -c 'import skimage.data, os; print(os.path.dirname(skimage.data.__file__))')" -o demo-dataset --preview demo-dataset/preview.png

# tiny-sd/ and tiny-sdxl/: diffusers pipeline folders with random weights (what they generate is noise),
# small enough to train on a CPU in seconds. docs/training.md shows a run on them from demo-dataset.
tiny-models: setup
	$(PY) -m controlnet.testing sd tiny-sd
	$(PY) -m controlnet.testing sdxl tiny-sdxl

test: setup
	$(PY) -m pytest
