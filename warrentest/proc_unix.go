//go:build unix

package warrentest

import (
	"errors"
	"syscall"
)

// pidGone reports whether no process with this pid exists.
func pidGone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}
