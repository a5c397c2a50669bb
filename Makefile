# RevenProx — the two commands a newcomer needs are `make run` and `make test`.
GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
GOLANGCI  := github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0
# Packages whose tests start many processes or run for minutes live behind `make test-long`.
TEST_TIMEOUT ?= 12m

.PHONY: run build test test-long lint bench fuzz image tools clean

## run: one node on :8080 with the bundled development config (anonymous clients allowed)
run: build
	$(BIN)/revenprox -c configs/dev.yaml

## build: the server and the load generator into bin/
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/revenprox ./cmd/revenprox
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/revenprox-bench ./cmd/revenprox-bench

## tools: what the tests need beyond Go (promtool from Debian's prometheus package)
tools:
	@scripts/install-prometheus.sh

## test: every unit and integration test with the race detector and goroutine-leak checks
test: tools
	$(GO) vet ./...
	$(GO) test -race -timeout $(TEST_TIMEOUT) ./...

## test-long: multi-process cluster fault tests and the end-to-end Prometheus test
test-long: tools build
	$(GO) test -race -timeout 20m -tags 'long e2e' ./cluster/... ./deploy/... ./cmd/...

## lint: gofmt, go vet and golangci-lint (pinned)
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) run $(GOLANGCI) run ./...

## bench: go benchmarks next to hot code, then the load-generator suite (rewrites docs/benchmarks.md)
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./topics/ ./proxy/ ./telemetry/ | tee $(BIN)/gobench.txt
	scripts/bench.sh

## fuzz: run each fuzz target for a short while
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecodeClientFrame -fuzztime 30s ./proxy/
	$(GO) test -run '^$$' -fuzz FuzzValidatePattern -fuzztime 30s ./topics/

## image: the container image (needs a Docker engine)
image:
	docker build -f deploy/Dockerfile --build-arg VERSION=$(VERSION) -t revenprox:$(VERSION) .

clean:
	rm -rf $(BIN)
