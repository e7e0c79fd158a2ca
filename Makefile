# sdns: `make run` serves with the embedded config; `make test` installs what the suite needs and runs it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the tests and benchmarks drive: real etcd, ZooKeeper, dig, dnsperf, dnsmasq, nft,
# ip, wrk, curl, and chromium for the dashboard's browser tests (driven by Playwright, no download).
DEBIAN_PACKAGES := etcd-server etcd-client zookeeper dnsutils dnsperf dnsmasq-base nftables iproute2 wrk curl chromium

.PHONY: run test lint system-deps bench clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "sdns needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/sdns serve --config conf/sdns.toml

# Installs the Debian packages that are missing (as root; otherwise says which tests will skip).
system-deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "not root: cannot install $$missing; tests that need them will skip"; \
	fi

lint: $(BIN)/.installed
	$(BIN)/ruff check .

test: $(BIN)/.installed system-deps lint
	$(BIN)/pytest

# Benchmarks are not tests: they measure, and write their figures to docs/PERFORMANCE.md.
# Knot DNS is a reference server of the DNS bench only.
bench: $(BIN)/.installed
	$(MAKE) system-deps DEBIAN_PACKAGES="$(DEBIAN_PACKAGES) knot"
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench $(BENCH)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
