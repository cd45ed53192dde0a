# The two commands of the README:
#   make run   runs the main job: examples/quickstart against a broker it finds or starts
#   make test  runs every test, against a real RabbitMQ (a private node it starts)
GO ?= go

# testcontainers-go must connect to 127.0.0.1, never to the default gateway
# it guesses when it believes it runs in a container, and must not start
# Ryuk (its image cannot be pulled). integration/containers_test.go sets
# both itself too.
export TESTCONTAINERS_HOST_OVERRIDE := 127.0.0.1
export TESTCONTAINERS_RYUK_DISABLED := true

.PHONY: run test vet

run:
	$(GO) run ./examples/quickstart

# make test: the unit tests, then the integration suite, the examples and
# the cluster test against every RabbitMQ version of the matrix below (set
# up first, idempotently), then the OTel adapter's tests and warrentest's
# (against the local or a private node; the matrix runs them against each
# version too).
test:
	.ci/brokers.sh $(BROKER_VERSIONS)
	$(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -count=1 -timeout 10m . ./internal/wire   # again without -race: allocation counts (it empties sync.Pools at random)
	$(MAKE) test-matrix
	cd otelwarren && $(GO) test -race -count=1 -timeout 10m ./...
	cd warrentest && $(GO) test -race -count=1 -timeout 10m ./...

# The broker matrix: RabbitMQ versions the integration suite, the cluster
# test and the examples run against, each in containers started by
# testcontainers-go from the image warren-rabbitmq:VERSION (built by
# .ci/brokers.sh from Debian packages) or the one named by
# WARREN_RABBITMQ_IMAGE_3_10 / WARREN_RABBITMQ_IMAGE_4_3.
#
#   make brokers      set up the Docker engine and every version's image (idempotent)
#   make test-3.10    the integration suite, the cluster test, warrentest's and otelwarren's tests against 3.10
#   make test-4.3     the same against 4.3
#   make test-matrix  both
BROKER_VERSIONS ?= 3.10 4.3
BROKER_TESTS := $(addprefix test-,$(BROKER_VERSIONS))

.PHONY: brokers test-matrix $(BROKER_TESTS)
brokers:
	.ci/brokers.sh $(BROKER_VERSIONS)

test-matrix: $(BROKER_TESTS)

# AMQP_URL is emptied so that the version asked for is the one tested.
$(BROKER_TESTS): test-%:
	.ci/brokers.sh $*
	cd integration && AMQP_URL= WARREN_BROKER=$* $(GO) test -race -count=1 -timeout 30m -skip '^TestCluster' ./...
	@# The three-node cluster test prints its failover times and counts (-v).
	cd integration && AMQP_URL= WARREN_BROKER=$* $(GO) test -race -count=1 -timeout 15m -run '^TestCluster' -v .
	cd warrentest && AMQP_URL= WARREN_BROKER=$* $(GO) test -race -count=1 -timeout 10m ./...
	cd otelwarren && ../.ci/with-broker.sh $* $(GO) test -race -count=1 -timeout 10m ./...

vet:
	test -z "$$(gofmt -l . | tee /dev/stderr)"
	$(GO) vet ./...
	cd integration && $(GO) vet ./...
	cd otelwarren && $(GO) vet ./...
	cd warrentest && $(GO) vet ./...

# make lint   staticcheck (pinned; installed from the Go module proxy into
#             .ci/bin) over the five modules, then govulncheck when its
#             vulnerability database (vuln.go.dev) is reachable
STATICCHECK_VERSION ?= v0.8.2
GOVULNCHECK_VERSION ?= v1.1.4
BIN := $(CURDIR)/.ci/bin
.PHONY: lint
lint:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(BIN)/staticcheck ./...
	cd integration && $(BIN)/staticcheck ./...
	cd benchmarks && $(BIN)/staticcheck ./...
	cd otelwarren && $(BIN)/staticcheck ./...
	cd warrentest && $(BIN)/staticcheck ./...
	GOBIN=$(BIN) $(GO) install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)
	@if curl -fsS -m 10 -o /dev/null https://vuln.go.dev/index/db.json.gz 2>/dev/null; then \
		$(BIN)/govulncheck ./... ; \
	else \
		echo "lint: govulncheck NOT run: the vulnerability database https://vuln.go.dev is unreachable from this machine" >&2 ; \
	fi

# make bench   runs every benchmark scenario (benchmarks/, its own module:
#              pool, publish, confirms, consume; warren against raw
#              amqp091-go, go-rabbitmq and puddle) against the local broker
#              and prints the Markdown report of BENCHMARKS.md; about 6 minutes
.PHONY: bench
bench:
	cd benchmarks && $(GO) run ./cmd/warrenbench

# make bench-instr   counts CPU instructions (valgrind's callgrind, one core),
#                    heap allocations and bytes per message of warren and of
#                    raw amqp091-go, scenario by scenario, against the local
#                    broker, and prints the Markdown table of BENCHMARKS.md
#                    ("Instructions per message"); installs valgrind from
#                    Debian if missing. INSTRBENCH_FLAGS passes flags, e.g.
#                    -repeat 3, -scenarios 1,3 or -warren DIR (another tree)
INSTRBENCH_FLAGS ?=
.PHONY: bench-instr
bench-instr:
	@command -v valgrind >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y valgrind \
		|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y valgrind ; }
	cd benchmarks && $(GO) run ./cmd/instrbench $(INSTRBENCH_FLAGS)
