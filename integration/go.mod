module github.com/warrenmq/warren/integration

go 1.26

require (
	github.com/warrenmq/warren v0.0.0
	go.uber.org/goleak v1.3.0
)

require github.com/rabbitmq/amqp091-go v1.16.0 // indirect

replace github.com/warrenmq/warren => ../
