# console-apiserver. The two commands a newcomer needs:
#   make run   - build everything, start a local control plane with
#                console-apiserver, print a URL that opens a terminal
#   make test  - install what tests need and run every test
SHELL := /usr/bin/env bash -o pipefail
.DEFAULT_GOAL := build

OUT        := _output
BIN        := $(OUT)/bin
GO_TEST    ?= go test
# Unit tests run with the race detector: a terminal relay is all concurrency.
UNIT_PKGS  := ./pkg/... ./cmd/... ./web/...
E2E_PKGS   := ./test/...
FUZZTIME   ?= 10s

.PHONY: build
build: web ## Build console-apiserver into _output/bin (with the page when npm is there).
	go build -o $(BIN)/console-apiserver ./cmd/console-apiserver

.PHONY: web
web: ## Build the terminal page from npm packages into web/dist (embedded by go build).
	cd web && if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then npm ci --no-audit --no-fund; fi && npm run build

.PHONY: tools
tools: ## Build etcd, kube-apiserver, kubectl and kwok from pinned modules (cached).
	hack/build-tools.sh

.PHONY: run
run: tools build ## Start the local plane, console-apiserver and a demo; print the URL. Ctrl-C stops all.
	go build -o $(BIN)/local-up ./hack/local-up
	$(BIN)/local-up --console

.PHONY: test-deps
test-deps: ## Install what tests need (Chromium, npm packages).
	hack/install-test-deps.sh

.PHONY: test
test: test-deps tools web verify test-unit test-fuzz test-e2e ## Everything CI runs.

.PHONY: verify
verify: ## gofmt, go vet and generated code up to date.
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^pkg/generated/')); if [ -n "$$out" ]; then echo "not gofmt'd: $$out"; exit 1; fi
	go vet ./...
	hack/verify-codegen.sh

.PHONY: test-unit
test-unit: ## Unit tests, with -race.
	$(GO_TEST) -race -count=1 $(UNIT_PKGS)

.PHONY: test-fuzz
test-fuzz: ## Short fuzz runs of the frame decoder and session lookup.
	$(GO_TEST) -run='^$$' -fuzz='^FuzzDecodeFrame$$' -fuzztime=$(FUZZTIME) ./pkg/sockjs/
	$(GO_TEST) -run='^$$' -fuzz='^FuzzClaim$$' -fuzztime=$(FUZZTIME) ./pkg/session/

.PHONY: test-e2e
test-e2e: ## Tests through the real chain: kube-apiserver, aggregator, kwok node, Chromium.
	$(GO_TEST) -count=1 -timeout=20m -p=1 $(E2E_PKGS)

.PHONY: bench
bench: tools ## Benchmarks: console vs direct exec vs a raw aggregated hop, one plane (BENCH_FLAGS=-quick: smoke run; see docs/benchmarks.md).
	go run ./test/bench/cmd/bench $(BENCH_FLAGS)

.PHONY: codegen
codegen: ## Regenerate deepcopy, conversion, defaults, OpenAPI and the clientset.
	hack/update-codegen.sh

.PHONY: image
image: ## Build the container image (needs a Docker engine).
	docker build -t console-apiserver:dev .

.PHONY: clean
clean: ## Remove build output (not the cached tool binaries).
	rm -rf $(BIN) web/dist/*.js web/dist/*.css web/dist/*.html $(OUT)/local-up

.PHONY: help
help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'
