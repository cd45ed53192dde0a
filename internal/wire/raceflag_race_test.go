//go:build race

package wire

// raceEnabled: under the race detector sync.Pool drops a share of what is
// put back, so allocation counts of pooled paths are not exact.
const raceEnabled = true
