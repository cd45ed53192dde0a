//go:build !unix

package brokertest

import (
	"errors"
	"syscall"
)

// Private nodes are not supported here; these stubs only keep the package
// compiling so that examples importing it build everywhere.

const privateNodesSupported = false

func groupProcAttr() *syscall.SysProcAttr { return nil }

func killGroup(int) error { return errors.New("brokertest: not supported on this system") }

func pidAlive(int) bool { return false }

func procHasEnv(int, string) bool { return false }
