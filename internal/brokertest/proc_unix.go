//go:build unix

package brokertest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"syscall"
)

const privateNodesSupported = true

// groupProcAttr puts a child in its own process group, so that killGroup
// reaches it and any helper it started without a new session, and a
// terminal's Ctrl-C (sent to the foreground group) does not.
func groupProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// killGroup sends SIGKILL to the process group pgid.
func killGroup(pgid int) error {
	if pgid <= 0 { // kill(0) and kill(-1) would hit far more than the node
		return fmt.Errorf("brokertest: refusing to kill process group %d", pgid)
	}
	err := syscall.Kill(-pgid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// pidAlive reports whether a process with this pid exists.
func pidAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// procHasEnv reports whether process pid was started with the environment
// entry kv (for example "NAME=value"). Without /proc it reports false, so
// that no unverified pid is ever killed.
func procHasEnv(pid int, kv string) bool {
	if pid <= 0 {
		return false
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return false
	}
	for _, entry := range bytes.Split(data, []byte{0}) {
		if string(entry) == kv {
			return true
		}
	}
	return false
}
