module github.com/warrenmq/warren

go 1.26

require (
	github.com/rabbitmq/amqp091-go v1.17.0
	go.uber.org/goleak v1.3.0
)
