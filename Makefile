# The two commands a new user needs: `make serve` and `make test`. Both install on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser sandbox postgres dropin-clients serve test lint typecheck check clean unit integration

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The dashboard's browser tests drive the system's Chromium (a test tool's own browser download
# does not work everywhere); install it from the distribution when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || scripts/install-chromium.sh

# The registry's and the cluster's tests start a private Postgres from the distribution's server
# binaries; install them when missing.
postgres:
	@scripts/install-postgres.sh

# Claude Code's Bash sandbox (bubblewrap and socat from the distribution): multi-tenant hosts
# switch it on per tenant (docs/security.md), and the security tests measure it.
sandbox:
	@scripts/install-sandbox.sh

# The drop-in tests' real TypeScript clients (the Agent SDK, the ACP adapter), pinned by
# tests/dropin/package-lock.json; installed again only when the lock file changed.
dropin-clients:
	@if command -v npm >/dev/null 2>&1; then \
	  [ tests/dropin/node_modules/.package-lock.json -nt tests/dropin/package-lock.json ] || \
	  (cd tests/dropin && npm ci --omit=optional --no-audit --no-fund --loglevel=error && touch node_modules/.package-lock.json); \
	fi

serve: $(STAMP)
	$(BIN)/hotsession serve $(ARGS)

test: $(STAMP) browser postgres sandbox dropin-clients
	$(BIN)/python -m pytest $(ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(ARGS)

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
