# apicache: the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080
DEV_KEY ?= dev-key-change-me

FUZZ_SECONDS ?= 300

.PHONY: run test test-fast demo lint bench bench-events bench-tags bench-freshness bench-hitratio bench-redis dashboard-preview install install-test clean fuzz chaos

# What a regular install copies into .venv: a change to any of them reinstalls.
SOURCES := setup.py $(shell find apicache twisted -name '*.py' 2>/dev/null)
# Stamps of the last install, so that `make run` and `make demo` don't
# reinstall on every start, and start offline once installed.
INSTALLED := $(VENV)/.installed
INSTALLED_TEST := $(VENV)/.installed-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# A regular (not editable) install: twistd finds the plugin only then.
$(INSTALLED): $(SOURCES) | $(BIN)/python
	$(BIN)/pip install --quiet .
	@touch $@

install: $(INSTALLED)

# json-server (npm, pinned by its package-lock.json) is an integration-test
# upstream; without npm the tests that need it say so and are skipped (and
# fail under CI=true: .ci/run installs npm).
$(INSTALLED_TEST): $(SOURCES) tests/upstreams/json-server/package-lock.json | $(BIN)/python
	$(BIN)/pip install --quiet '.[test]'
	@if command -v npm >/dev/null; then npm ci --silent --no-audit --no-fund --prefix tests/upstreams/json-server; \
	else echo "npm not found: the json-server integration tests will be skipped"; fi
	@touch $@ $(INSTALLED)

install-test: $(INSTALLED_TEST)

# Serves out of the box: without APICACHE_UPSTREAM_URL the launcher also
# starts the bundled demo upstream; Ctrl-C or SIGTERM stops both, exit 0.
# More apicache options: make run RUN_ARGS="--workers 2".
run: install
	@APICACHE_API_KEY=$(DEV_KEY) exec $(BIN)/python bench/run_local.py --port $(PORT) --config apicache.toml -- $(RUN_ARGS)

# Test workers (pytest-xdist): most of a run waits on real processes
# (brokers joining, daemons starting, timeouts), so three workers on two
# cores take about half the time of one; each module stays in one worker.
TEST_WORKERS ?= 3
XDIST := -n $(TEST_WORKERS) --dist loadfile

# Every test (about 4 minutes on 2 cores; under 10 on one worker).
test: install-test
	$(BIN)/python -m pytest $(XDIST) tests

# The inner loop: no test that starts a process (marker `integration`) or
# takes long (`slow`); under 2 minutes.
test-fast: install-test
	$(BIN)/python -m pytest $(XDIST) -m "not integration and not slow" tests

demo: install
	@APICACHE_API_KEY=$(DEV_KEY) PY=$(BIN)/python TWISTD=$(BIN)/twistd sh bench/demo.sh

# The hit path against bare twisted.web and nginx (needs `apt-get install wrk nginx`;
# says so without them). Figures: docs/benchmarks.md.
bench: install
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# 1,000 invalidation events at 100/s through a real broker: produce->applied p50/p99
bench-events: install-test
	$(BIN)/python bench/events.py --events 1000 --rate 100

# Tag purges of 1k/10k/100k entries (memory and a private redis-server),
# bytes per (entry, tag) pair, cross-instance purge latency p50/p99
bench-tags: install-test
	$(BIN)/python bench/tags.py $(BENCH_ARGS)

# Staleness of every answer against a versioned upstream, steady,
# with the broker paused for 30 s and with an instance killed (group mode,
# Redis), with and without max_staleness
bench-freshness: install-test
	$(BIN)/python bench/freshness.py $(BENCH_ARGS)

# What each Redis store operation costs Redis (calls, commands, CPU, bytes,
# replication) per hit, miss, purge and event, and memory per entry, on a
# private local Redis Cluster (3 primaries, 3 replicas) and on one
# redis-server (needs redis-server and redis-cli); figures: docs/capacity.md.
bench-redis: install
	$(BIN)/python bench/redis_ops.py $(BENCH_ARGS)

# The dashboard's panels drawn from real /metrics scrapes under wrk load
# (README: Dashboard and alerts): writes deploy/dashboard-preview.png.
dashboard-preview: $(BIN)/python
	$(BIN)/pip install --quiet '.[test,preview]'
	$(BIN)/python bench/dashboard_preview.py --out deploy/dashboard-preview.png $(PREVIEW_ARGS)

# Hit ratios of the memory store against libCacheSim; BENCH_ARGS=--quick for a smoke run.
# A fixed hash seed: the S3-FIFO ghost hashes keys, so runs repeat exactly.
# Then the noisy-neighbour scenario through the real daemon (about 55 s;
# NOISY_ARGS=--help lists its knobs).
bench-hitratio: install
	$(BIN)/pip install --quiet '.[bench]'
	PYTHONHASHSEED=0 $(BIN)/python bench/hitratio.py $(BENCH_ARGS)
	$(BIN)/python bench/noisy_neighbour.py $(filter --quick,$(BENCH_ARGS)) $(NOISY_ARGS)

# The fuzz targets (tests/fuzz/targets.py) for FUZZ_SECONDS in
# all; `make test` runs a short smoke run of them (tests/test_fuzz_smoke.py).
fuzz: install-test
	$(BIN)/python tests/fuzz/run.py --seconds $(FUZZ_SECONDS)

# Real daemons on Redis and group-mode Kafka, one killed with SIGKILL under
# load and restarted (about 30 s, so not part of `make test`).
chaos: install-test
	APICACHE_CHAOS=1 $(BIN)/python -m pytest tests/test_chaos.py -q -s

lint: install-test
	$(BIN)/ruff check apicache tests bench
	$(BIN)/mypy apicache

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

# Verified tenants (README "Tenants you can trust"): a signing key
# generated on the spot, its key set in a file, apicache with ./apicache.toml
# plus [auth] and tenant_claim = "zid"; a token accepted, a forged one and a
# missing one refused (401), another tenant's refused (403). `make run` keeps
# ./apicache.toml as it is, without [auth].
.PHONY: demo-auth
demo-auth: install
	@APICACHE_API_KEY=$(DEV_KEY) $(BIN)/python bench/demo_auth.py $(DEMO_AUTH_ARGS)
