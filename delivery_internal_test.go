package warren

import (
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestDeliveryCount(t *testing.T) {
	for _, tc := range []struct {
		header any
		want   int
	}{
		{nil, 0}, {int64(4), 4}, {int32(3), 3}, {int16(2), 2}, {int8(1), 1}, {uint8(5), 5},
		{uint16(6), 6}, {uint32(7), 7}, {"8", 0}, {float64(9), 0},
	} {
		d := &Delivery{Delivery: amqp.Delivery{Headers: Table{}}}
		if tc.header != nil {
			d.Headers["x-delivery-count"] = tc.header
		}
		if got := d.DeliveryCount(); got != tc.want {
			t.Errorf("x-delivery-count %T(%v): DeliveryCount() = %d, want %d", tc.header, tc.header, got, tc.want)
		}
	}
}
