# The two commands of the README: `make fleet` runs a local fleet, `make test` runs every check.
# Both create the virtualenv (.venv) and install bot into it on first use. While developing:
# `make unit` (unit and contract tests: no Redis, seconds), `make lint` (ruff, mypy, the layer
# contract of pyproject.toml through lint-imports).

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SOAK_INSTALLED := $(VENV)/.soak-installed

.PHONY: fleet test lint unit bench bench-scale soak profile mutate

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(INSTALLED)

fleet: $(INSTALLED)
	$(BIN)/bot up

lint: $(INSTALLED)
	$(BIN)/ruff check bot config tasks tests bench
	$(BIN)/ruff format --check bot config tasks tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(INSTALLED)
	$(BIN)/pytest tests/unit tests/contract

test: lint
	$(BIN)/pytest

# Plants each bug of tests/mutations.txt, one at a time, in a copy of the checkout and runs the
# fast tests that must catch it; fails if one survives (README: "Mutation probe").
mutate: $(INSTALLED)
	$(BIN)/python -m tests.mutation_probe

# Every benchmark, quick settings (about 10 minutes here; replica_wait_bench: the price of
# BOT_REDIS_MIN_REPLICAS, docs/failover.md; memory_per_job: Redis bytes a finished job holds,
# README "Redis memory"); the fleet and report delivery tables go into
# docs/benchmarks.md. `make profile`: where a bot job's time goes (py-spy, docs/profiles/).
bench: $(INSTALLED)
	$(BIN)/python bench/fleet_bench.py --write
	$(BIN)/python bench/pool_bench.py
	$(BIN)/python bench/memory_bench.py --runs 1
	$(BIN)/python bench/memory_per_job.py --jobs 2000
	$(BIN)/python bench/outbox_bench.py
	$(BIN)/python bench/relay_bench.py --write
	$(BIN)/python bench/recovery_bench.py --trials 2 --cap 15
	$(BIN)/python bench/replica_wait_bench.py --jobs 2000

# 20 real `-c 1` workers + 200 simulated members on one Redis: Redis CPU per heartbeat and per
# job, reaper pass time, `bot fleet` latency (a few minutes); the table goes into docs/scaling.md.
bench-scale: $(INSTALLED)
	$(BIN)/python bench/scale_bench.py --write

# A 2-worker fleet, a relay and a sink at ~70 % of measured capacity for SOAK_MINUTES (20),
# with a kill -9 every 4 minutes and one Redis restart: worker RSS, Redis memory, outbox
# length and latency every 30 s, every job accounted for; docs/soak.md and docs/soak.png.
soak: $(SOAK_INSTALLED)
	$(BIN)/python bench/soak.py --minutes $${SOAK_MINUTES:-20} --write

$(SOAK_INSTALLED): $(INSTALLED) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[soak]'
	touch $(SOAK_INSTALLED)

profile: $(INSTALLED)
	$(BIN)/python bench/fleet_bench.py --profile
