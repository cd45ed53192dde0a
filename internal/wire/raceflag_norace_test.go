//go:build !race

package wire

// raceEnabled: see raceflag_race_test.go.
const raceEnabled = false
