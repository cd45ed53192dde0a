//go:build !unix

package warren

import "time"

// processCPU returns 0: not measured on this system.
func processCPU() time.Duration { return 0 }
