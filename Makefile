# healthgate: `make demo` shows it working, `make test` is what CI runs.
GO      ?= go
BIN     := bin
# scripts/consul.sh prints the cached agent's path, building it the first time.
CONSUL   = $(shell ./scripts/consul.sh)

.PHONY: all build test vet fmt-check consul demo demo-tls run bench bench-quick scale clean fuzz

# FUZZ_TARGETS is every fuzz test, as package:Target. make test fuzzes each
# for FUZZTIME_TEST, make fuzz for FUZZTIME. A failing input is written to
# the package's testdata/fuzz/, where plain go test replays it from then on.
FUZZ_TARGETS  := metrics:FuzzMethodLabels balancer:FuzzServiceOf proxy:FuzzOutgoingMD proxy:FuzzGRPCTimeout proxy:FuzzMsgLimit proxy:FuzzGrpcMessage proxy:FuzzPushback proxy/proxycfg:FuzzParseBackoff proxy/proxycfg:FuzzParseBytes config:FuzzConfigParse config:FuzzStaticBackends internal/h2:FuzzHeaderReader internal/h2:FuzzServerConn grpcweb:FuzzTextDecoder grpcweb:FuzzFrameChecker
FUZZTIME_TEST ?= 3s
FUZZTIME      ?= 60s

all: build

build:
	$(GO) build -o $(BIN)/healthgate ./cmd/healthgate
	$(GO) build -o $(BIN)/example-backend ./cmd/example-backend
	$(GO) build -o $(BIN)/healthgate-demo ./example/demo

# consul builds the pinned Consul agent into ~/.cache/healthgate once.
consul:
	@./scripts/consul.sh >/dev/null

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# test: formatting, vet, then every test with the race detector against a
# real Consul agent; the smoke test runs verbosely so the log shows the agent.
# The bench module's own tests (its report and targets) run too.
# Last, each fuzz target runs briefly (B16).
test: consul fmt-check vet
	HEALTHGATE_CONSUL=$(CONSUL) $(GO) test -race -count=1 ./...
	HEALTHGATE_CONSUL=$(CONSUL) $(GO) test -race -count=1 -v -run 'TestConsulSmoke' ./internal/testutil/
	cd bench && $(GO) vet ./... && $(GO) test -race -count=1 ./...
	GO=$(GO) ./scripts/fuzz.sh $(FUZZTIME_TEST) $(FUZZ_TARGETS)

# fuzz: each fuzz target for FUZZTIME (make fuzz FUZZTIME=10m).
fuzz:
	GO=$(GO) ./scripts/fuzz.sh $(FUZZTIME) $(FUZZ_TARGETS)

# demo: Consul, two example Login backends that register themselves, and
# healthgate; then a client walks through the health flips and everything
# stops.
demo: build consul
	$(BIN)/healthgate-demo -consul-bin $(CONSUL) -bin $(BIN)

# demo-tls: the same story over TLS: a demo CA made on the spot, TLS from
# the client to healthgate (listen_tls), mTLS from healthgate to the
# backends (backend_tls), and Consul's checks of the backends over mTLS.
demo-tls: build consul
	$(BIN)/healthgate-demo -consul-bin $(CONSUL) -bin $(BIN) -tls

# run: the same stack, left running for grpcurl until Ctrl-C.
run: build consul
	$(BIN)/healthgate-demo -consul-bin $(CONSUL) -bin $(BIN) -keep

# ui-test: renders the admin status page in headless Chromium (installed
# from Debian when missing), checks its DOM and leaves a screenshot in
# admin/testdata/screenshots/ (ignored by git).
.PHONY: ui-test
ui-test: grpcweb-ui-test
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)
	HEALTHGATE_UI_TEST=1 $(GO) test -race -count=1 -run UI -v ./admin/

# grpcweb-ui-test: the example page (example/webclient) calls the example
# Login service through a gateway with grpc-web, Google's gRPC-Web client,
# in headless Chromium: text and binary mode, HTTP/1.1 on both engines and
# HTTP/2 over TLS on the relay, through a NOT_SERVING flip and back.
# Installs Chromium, Node.js and npm from Debian when missing, the page's
# packages at the versions package-lock.json pins, and bundles the page
# with esbuild into example/webclient/dist/ (ignored by git, like the
# screenshots in testdata/screenshots/). make test needs none of it.
.PHONY: grpcweb-ui-test
grpcweb-ui-test:
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)
	@command -v npm >/dev/null || (apt-get update && apt-get install -y nodejs npm)
	cd example/webclient && npm ci --no-audit --no-fund && npm run build
	HEALTHGATE_UI_TEST=1 $(GO) test -race -count=1 -run 'TestB90_Browser' -v ./example/webclient/

bench:
	cd bench && $(GO) run ./cmd/bench -mode full $(BENCHFLAGS)

bench-quick:
	cd bench && $(GO) run ./cmd/bench -mode quick $(BENCHFLAGS)

# scale: health checking of 1,000 and 5,000 in-process backends under GOGC
# 100, 400, and 400 with the soft limit healthgate keeps by itself (400:live),
# each run in its own process: sync time, RSS, live heap,
# goroutines, idle cost per backend, flip-to-out latency. Takes a few
# minutes and a few GiB; not part of make test, which runs a 200-backend
# check of the harness instead. Override with SCALEENV, e.g.
# SCALEENV='HEALTHGATE_SCALE_N=1000 HEALTHGATE_SCALE_GOGC=400:80MiB
# HEALTHGATE_SCALE_REPS=3 HEALTHGATE_SCALE_PROFILE=/tmp/scale' (see
# internal/scale/scale_test.go). scripts/bench-gogc.sh is the same question
# for the cost per call.
scale:
	HEALTHGATE_SCALE=1 $(SCALEENV) $(GO) test -count=1 -timeout 60m -run '^TestScale$$' -v ./internal/scale/

clean:
	rm -rf $(BIN)
