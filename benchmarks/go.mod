module github.com/warrenmq/warren/benchmarks

go 1.26.0

require (
	github.com/jackc/puddle/v2 v2.2.3
	github.com/rabbitmq/amqp091-go v1.17.0
	github.com/wagslane/go-rabbitmq v0.15.0
	github.com/warrenmq/warren v0.0.0
	golang.org/x/sync v0.25.0
)

replace github.com/warrenmq/warren => ../
