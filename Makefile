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

## bench: go benchmarks of the hot paths (a fixed set, 3 runs of 1 s each, ~2-3 min; raw output in
##        bin/gobench.txt, medians printed), then the load-generator suite scripts/bench.sh (~5 min;
##        rewrites the generated block of docs/benchmarks.md). The whole target stays under 10 min:
##        the suite skips generator runs that would start after BENCH_TIMEOUT s (380 here, vs ~290 s usual).
bench: GOBENCH = $(GO) test -run '^$$' -benchmem -count 3 -benchtime 1s -timeout 5m
bench: BENCHSTAT = golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
# Median per benchmark and unit, if benchstat cannot be fetched (offline).
bench: MEDIANS = awk '/^pkg:/ { pkg = $$2; sub(".*/", "", pkg) } \
	/^Benchmark/ { for (i = 3; i < NF; i += 2) { k = pkg " " $$1 " " $$(i+1); if (!(k in n)) key[++m] = k; v[k, ++n[k]] = $$i + 0 } } \
	END { for (j = 1; j <= m; j++) { k = key[j]; c = n[k]; \
	  for (a = 2; a <= c; a++) { x = v[k, a]; for (b = a - 1; b >= 1 && v[k, b] > x; b--) v[k, b + 1] = v[k, b]; v[k, b + 1] = x } \
	  printf "%s %s (median of %d)\n", k, v[k, int((c + 1) / 2)], c } }'
bench: build
	@mkdir -p $(BIN) && echo "load average at the start: $$(cut -d' ' -f1-3 /proc/loadavg)" | tee $(BIN)/gobench.txt
	$(GOBENCH) -bench '^Benchmark(MatchLiteral|MatchWildcard|Fanout10k|SubscribeUnsubscribe|SubscribeExisting|MatchParallel|IndexMemory)$$' ./topics/ | tee -a $(BIN)/gobench.txt
	$(GOBENCH) -bench '^Benchmark(Fanout10k|Fanout100kTopics|FanoutParallel|FanoutLoopback|LoopbackWrite|EncodeMessageFrame|DecodeClientFrame)$$' ./proxy/ | tee -a $(BIN)/gobench.txt
	$(GOBENCH) -bench '^BenchmarkAuthenticateCached$$' ./auth/ | tee -a $(BIN)/gobench.txt
	$(GOBENCH) -bench '^Benchmark(CrossNodePublish|PublishNoInterest)$$' ./cluster/ | tee -a $(BIN)/gobench.txt
	$(GOBENCH) -bench '^BenchmarkLatencyObserve$$' ./telemetry/ | tee -a $(BIN)/gobench.txt
	@echo "load average at the end: $$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a $(BIN)/gobench.txt
	@! grep -E '^(--- )?FAIL|^panic:' $(BIN)/gobench.txt
	$(GO) run $(BENCHSTAT) $(BIN)/gobench.txt 2>/dev/null || $(MEDIANS) $(BIN)/gobench.txt
	BENCH_TIMEOUT=$${BENCH_TIMEOUT:-380} scripts/bench.sh

## fuzz: run each fuzz target for a short while (FUZZTIME each)
FUZZTIME ?= 20s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeClientFrame$$' -fuzztime $(FUZZTIME) ./proxy/
	$(GO) test -run '^$$' -fuzz '^FuzzFrameReader$$' -fuzztime $(FUZZTIME) ./proxy/
	$(GO) test -run '^$$' -fuzz '^FuzzValidatePattern$$' -fuzztime $(FUZZTIME) ./topics/
	$(GO) test -run '^$$' -fuzz '^FuzzMatch$$' -fuzztime $(FUZZTIME) ./topics/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeDecision$$' -fuzztime $(FUZZTIME) ./auth/
	$(GO) test -run '^$$' -fuzz '^FuzzLoadYAML$$' -fuzztime $(FUZZTIME) ./config/
	$(GO) test -run '^$$' -fuzz '^FuzzTextLogLine$$' -fuzztime $(FUZZTIME) ./telemetry/
	$(GO) test -run '^$$' -fuzz '^FuzzParseCgroupBytes$$' -fuzztime $(FUZZTIME) ./telemetry/
	$(GO) test -run '^$$' -fuzz '^FuzzReceiveHeartbeat$$' -fuzztime $(FUZZTIME) ./cluster/
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./cluster/
	$(GO) test -run '^$$' -fuzz '^FuzzNATSParser$$' -fuzztime $(FUZZTIME) ./bench/loadgen/
	$(GO) test -run '^$$' -fuzz '^FuzzParsePayload$$' -fuzztime $(FUZZTIME) ./bench/loadgen/

## image: the container image (needs a Docker engine)
image:
	docker build -f deploy/Dockerfile --build-arg VERSION=$(VERSION) -t revenprox:$(VERSION) .

clean:
	rm -rf $(BIN)
