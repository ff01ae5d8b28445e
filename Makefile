# Two commands do all the set-up on a fresh machine:
#   make demo   install, then ReLIFT on the embedded default (local Ray, CPU, a few minutes)
#   make test   install, then every test tier (unit, integration, slow)
# and two for developers:
#   make test-unit   the unit tier: no Ray, under a minute
#   make test-fast   unit + integration (local Ray): what plain `pytest` runs
.PHONY: install demo test test-fast test-unit

install:
	bash scripts/install.sh

demo: install
	.venv/bin/python -m relift_ray.jobs.toy_base  # the toy base model: shipped with the package, prints its folder
	.venv/bin/python jobs/train.py

test: install
	.venv/bin/python -m pytest -m "slow or not slow" -v

test-fast: install
	.venv/bin/python -m pytest

test-unit: install
	.venv/bin/python -m pytest -m unit
