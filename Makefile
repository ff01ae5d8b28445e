# Two commands do all the set-up on a fresh machine:
#   make demo   install, then ReLIFT on the embedded default (local Ray, CPU, a few minutes)
#   make test   install, then every test (fast tier and slow tier)
.PHONY: install demo test test-fast

install:
	bash scripts/install.sh

demo: install
	.venv/bin/python -m relift_ray.toy.base  # the toy base model: shipped with the package, prints its folder
	RAY_AUTH_MODE=disabled .venv/bin/python jobs/train.py

test: install
	RAY_AUTH_MODE=disabled .venv/bin/python -m pytest -m "slow or not slow" -v

test-fast: install
	RAY_AUTH_MODE=disabled .venv/bin/python -m pytest
