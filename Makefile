# napari-zup: `make run` and `make test` work on a fresh machine (Debian/Ubuntu, Python >= 3.11).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.zup-installed
TORCH ?= torch==2.13.0
OUT ?= out

.PHONY: run test install sysdeps bench clean headless

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q -U pip

# torch first (a CPU build is on disk here); then the project with every extra, and a Qt
# binding for napari (the package itself does not force one on a user's environment).
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[napari,distributed,testing]" PyQt6
	touch $(STAMP)

install: $(STAMP)

# Xvfb and the xcb libraries Qt needs, for GUI tests and screenshots (root or sudo).
sysdeps:
	@if ! command -v Xvfb >/dev/null || ! ldconfig -p | grep -q libxcb-icccm.so.4; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends \
	    xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 \
	    libxcb-xkb1 libxkbcommon-x11-0 libxcb-cursor0 libegl1 libgl1 libfontconfig1 libdbus-1-3 >/dev/null; \
	fi

# With a display: napari with the sample volume and the Reconstruct widget.
# Without one: the same job through the CLI, writing the result and a PNG montage to $(OUT)/.
run: $(STAMP)
	@if [ -n "$$DISPLAY" ] || [ -n "$$WAYLAND_DISPLAY" ]; then \
	  $(PY) -m napari_zup.launch; \
	else \
	  $(MAKE) --no-print-directory headless; \
	fi

headless: $(STAMP)
	@mkdir -p $(OUT)
	@echo "No display: running the Reconstruct job headless (zup reconstruct)."
	$(PY) -m napari_zup.cli sample $(OUT)/sample_anisotropic.tif --overwrite
	$(VENV)/bin/zup reconstruct $(OUT)/sample_anisotropic.tif $(OUT)/sample_of-linear_x4.tif \
	  --method of-linear --factor auto --overwrite --montage $(OUT)/sample_of-linear_x4.png
	@echo "Result: $(OUT)/sample_of-linear_x4.tif   montage: $(OUT)/sample_of-linear_x4.png"

test: $(STAMP) sysdeps
	$(PY) -m pytest -q -ra --timeout=900

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(OUT) .pytest_cache build dist src/*.egg-info
