# Haulmesh: the front door. `make run` brings the mesh up; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HAULMESH := $(VENV)/bin/haulmesh
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
PROTOS := $(shell find protos -name '*.proto' 2>/dev/null)
GENERATED := haulmesh/.generated

.PHONY: help venv protos certs run sandbox demo demo-edi bench status stop test chaos fuzz openapi lint lint-protos breaking tools clean distclean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Haulmesh needs Python 3.11, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.2
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	@touch $@

venv: $(VENV)/.installed ## create the virtualenv and install the project

$(GENERATED): $(VENV)/.installed $(PROTOS) scripts/protos/gen.sh
	PYTHON=$(PY) bash scripts/protos/gen.sh
	@touch $@

protos: $(GENERATED) ## generate Python code (and type stubs) from protos/

$(BUF):
	@command -v npm >/dev/null || { echo "npm is needed to install buf (the proto linter): apt-get install npm"; exit 1; }
	npm install --silent --no-save --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

tools: $(BUF) ## install buf (proto lint and breaking-change checks)

# The interactive API reference's files (Swagger UI from npm, pinned with integrity hashes by
# scripts/docs-ui/package-lock.json), installed at build time into the gitignored build/docs-ui/ and served by the
# gateway at /docs from there (services/gateway/rest/docs_ui.py): no CDN. The image installs them with the same
# script (Dockerfile, stage docs-ui).
DOCS_UI_SOURCES := scripts/docs-ui/install.sh scripts/docs-ui/package.json scripts/docs-ui/package-lock.json
DOCS_UI := build/docs-ui/.installed
$(DOCS_UI): $(DOCS_UI_SOURCES)
	bash scripts/docs-ui/install.sh build/docs-ui
	@touch $@
.PHONY: docs-ui
docs-ui: $(DOCS_UI) ## install the /docs page's Swagger UI (npm, pinned) into build/docs-ui
run: docs-ui
demo: docs-ui
test: docs-ui

# The operations console's files (MapLibre GL JS, Chart.js, axe-core, and a US states base map built from us-atlas
# with topojson-client; all from npm, pinned with integrity hashes by scripts/console/package-lock.json), installed
# at build time into the gitignored build/console/ and served by the gateway at /console/ from there: no CDN, no
# tile server. The image installs them with the same script (Dockerfile, stage console-assets).
CONSOLE_ASSETS_SOURCES := scripts/console/install.sh scripts/console/package.json scripts/console/package-lock.json
CONSOLE_ASSETS := build/console/.installed
$(CONSOLE_ASSETS): $(CONSOLE_ASSETS_SOURCES)
	bash scripts/console/install.sh build/console
	@touch $@
.PHONY: console-assets
console-assets: $(CONSOLE_ASSETS) ## install the /console page's assets (npm, pinned) and its base map into build/console
run: console-assets
demo: console-assets
test: console-assets
sandbox: console-assets docs-ui

# The OpenID provider the console's sign-in tests start (npm oidc-provider, pinned by its lock; tests/support/oidc),
# installed into the gitignored build/oidc-provider/.
OIDC_PROVIDER_SOURCES := scripts/oidc-provider/install.sh scripts/oidc-provider/package.json \
	scripts/oidc-provider/package-lock.json
OIDC_PROVIDER := build/oidc-provider/.installed
$(OIDC_PROVIDER): $(OIDC_PROVIDER_SOURCES)
	bash scripts/oidc-provider/install.sh build/oidc-provider
	@touch $@
test: $(OIDC_PROVIDER)

certs: $(VENV)/.installed ## dev CA and certificates for every service, the CLI and the demo truck (if missing)
	$(HAULMESH) pki dev-bootstrap

run: protos certs ## start the store and the whole mesh; Ctrl-C stops it
	$(HAULMESH) run

sandbox: protos ## the mesh with a sandbox carrier, synthetic tenders and simulated trucks in rescue scenarios
	$(HAULMESH) sandbox $(SANDBOX_ARGS)

demo: protos ## the whole flow end to end on a fresh local mesh: tender → offer → dispatch → delivery → invoice → reconciled
	$(PY) scripts/demo.py

demo-edi: protos ## the seed flow as EDI X12 over SFTP on a fresh local mesh: 204 → 997/990 → 214s → 210 → the TMS's 997s
	$(PY) scripts/demo_edi.py

bench: protos ## measured figures (printed, and written to build/bench.json)
	$(PY) scripts/bench.py

status: ## health of every service over mTLS (exit 0 only if all SERVING)
	$(HAULMESH) status

stop: ## stop a mesh started with `haulmesh run --detach`
	$(HAULMESH) stop

lint-protos: $(BUF) $(VENV)/.installed ## buf lint (STANDARD, offline)
	PYTHON=$(PY) BUF=$(BUF) bash scripts/protos/lint.sh

breaking: $(BUF) $(VENV)/.installed ## buf breaking (WIRE_JSON): every contract since protos/BREAKING_BASELINE against the one before
	PYTHON=$(PY) BUF=$(BUF) bash scripts/protos/breaking.sh

lint: lint-protos $(VENV)/.installed ## ruff on the Python code, buf lint on the protos
	$(VENV)/bin/ruff check .

test: protos lint breaking ## every test: lint, proto breaking check, unit, integration over real mTLS and a real store
	$(PY) -m pytest $(PYTEST_ARGS)

# The acceptance tests of issue 11 at full strength (tests marked chaos, which `make test` deselects: their short
# versions run there), once per seed; results by test id in build/chaos.json (tests/chaos.py).
CHAOS_SEEDS ?= 11,23,37
chaos: protos ## the fault acceptance tests at full strength, several seeds; writes build/chaos.json
	$(PY) -m pytest -m chaos --chaos --chaos-seeds=$(CHAOS_SEEDS) --chaos-json=build/chaos.json $(PYTEST_ARGS)

openapi: protos ## write the REST API's OpenAPI document to docs/openapi.json (committed; a test fails when it is stale)
	$(PY) -m services.gateway.rest.openapi docs/openapi.json

# Schemathesis against a real mesh (tests/gateway/rest/test_fuzz.py): every operation, all checks, stateful phase,
# FUZZ_EXAMPLES examples per operation; the AT-19 row in build/fuzz.json. `make test` runs the same test short.
FUZZ_EXAMPLES ?= 200
fuzz: protos ## schemathesis (all checks, stateful) against a real mesh, 200 examples per operation; build/fuzz.json
	HAULMESH_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) HAULMESH_FUZZ_JSON=build/fuzz.json \
		$(PY) -m pytest tests/gateway/rest/test_fuzz.py $(PYTEST_ARGS)
# The frame fuzz target (tests/telemetry/fuzz: the stream's decoding and signature verification), longer than the
# short run of `make test`: FUZZ_FRAME_EXAMPLES per input strategy; a new outcome or the run's smallest crash is
# saved as a seed in tests/telemetry/fuzz/corpus/ (commit it: `make test` replays the corpus). Part of `make fuzz`.
FUZZ_FRAME_EXAMPLES ?= 5000
.PHONY: fuzz-frames
fuzz-frames: protos ## fuzz the telemetry frame decoding and verification, 5,000 examples per strategy
	HAULMESH_FUZZ_FRAME_EXAMPLES=$(FUZZ_FRAME_EXAMPLES) HAULMESH_FUZZ_FRAME_SAVE=1 \
		$(PY) -m pytest tests/telemetry/fuzz $(PYTEST_ARGS)
fuzz: fuzz-frames

clean: ## remove generated code and build output (keeps certificates and store data)
	rm -rf haulmesh build .pytest_cache

distclean: clean ## also remove the virtualenv, tools and local state (certificates, store data)
	rm -rf $(VENV) .tools .haulmesh
