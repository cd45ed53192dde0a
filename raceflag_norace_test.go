//go:build !race

package warren

// raceEnabled: see raceflag_race_test.go.
const raceEnabled = false
