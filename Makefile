# The two commands of the README:
#   make run   runs the main job: examples/quickstart against a broker it finds or starts
#   make test  runs every test, against a real RabbitMQ (a private node it starts)
GO ?= go

.PHONY: run test vet

run:
	$(GO) run ./examples/quickstart

test:
	$(GO) test -race -count=1 -timeout 20m ./...
	cd integration && $(GO) test -race -count=1 -timeout 30m ./...

vet:
	test -z "$$(gofmt -l . | tee /dev/stderr)"
	$(GO) vet ./...
	cd integration && $(GO) vet ./...

# make bench   runs every benchmark scenario (benchmarks/, its own module) and
#              prints the Markdown report of BENCHMARKS.md; about 2 minutes
.PHONY: bench
bench:
	cd benchmarks && $(GO) run ./cmd/warrenbench
