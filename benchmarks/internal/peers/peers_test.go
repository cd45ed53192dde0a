package peers

import (
	"slices"
	"strings"
	"testing"
)

func TestSelect(t *testing.T) {
	known := []string{"raw", "warren", GoRabbitMQ}
	all, err := Select("x", nil, known)
	if err != nil || !slices.Equal(all.Names, known) || all.Baseline != "raw" || all.NotRun[Amqpx] == "" || !all.Has("raw", "warren") {
		t.Fatalf("none chosen: %+v, %v", all, err)
	}
	some, err := Select("x", []string{"warren", GoRabbitMQ}, known)
	if err != nil || some.Baseline != "warren" || some.NotRun != nil || some.Has("raw") {
		t.Fatalf("chosen without raw: %+v, %v", some, err)
	}
	if _, err := Select("x", []string{Amqpx}, known); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("amqpx chosen: %v", err)
	}
	if _, err := Select("x", []string{"nope"}, known); err == nil || !strings.Contains(err.Error(), "x contender nope: unknown") {
		t.Fatalf("unknown chosen: %v", err)
	}
}
