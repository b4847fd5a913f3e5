# pdstack: `make demo` (testbed + deploy + the seed request) and `make test` on a fresh machine.
SHELL := /bin/bash
PY := .venv/bin/python
HOSTS ?= 9
DEVICES ?= 16

.PHONY: setup image testbed-up testbed-down demo test test-quick clean bench

setup:
	bash scripts/setup.sh

# The simulator image, built from Debian packages and pushed to the testbed's registry.
image: setup testbed-up
	bash scripts/push-simulator-image.sh

testbed-up: setup
	$(PY) -m testbed up --hosts $(HOSTS) --devices $(DEVICES)

testbed-down:
	$(PY) -m testbed down

demo: image
	bash scripts/demo.sh

test: setup
	bash scripts/test.sh

# Everything but the tests marked slow (fault injection, rolling updates): a quicker check while working.
test-quick: setup
	bash scripts/test.sh -m 'not slow'

clean: testbed-down
	rm -rf .pdstack

# Deploy and update cost against the critical path and Ansible at 9, 17 and 33 hosts (bench/bench.sh:
# runs the setup itself, the toolchain build alongside the testbed's start; takes the testbed lock,
# brings its own testbed up and down; writes bench/results/).
bench:
	bash bench/bench.sh
