//go:build race

package warren

// raceEnabled: the race detector is on (sync.Pool then drops items at
// random, so allocation counts that rely on a pool are checked without it).
const raceEnabled = true
