package bench

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"
)

// Machine describes where a run happened.
type Machine struct {
	CPU        string // model name from /proc/cpuinfo
	Cores      int    // logical CPUs the process may use
	GOMAXPROCS int
	Go         string // toolchain version
	Platform   string // GOOS/GOARCH and kernel release
}

// ThisMachine returns the Machine the process runs on.
func ThisMachine() Machine {
	m := Machine{
		CPU:        "unknown",
		Cores:      runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		Go:         runtime.Version(),
		Platform:   runtime.GOOS + "/" + runtime.GOARCH,
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Platform += ", Linux " + strings.TrimSpace(string(b))
	}
	return m
}

// ModuleVersion returns the version of a dependency linked into the
// program, "" if it is not.
func ModuleVersion(path string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, d := range bi.Deps {
		if d.Path == path {
			if d.Replace != nil {
				return d.Version + " => " + d.Replace.Path
			}
			return d.Version
		}
	}
	return ""
}

// Write writes m as a Markdown list.
func (m Machine) Write(w io.Writer) {
	fmt.Fprintf(w, "- CPU: %s, %d logical CPUs, GOMAXPROCS=%d\n", m.CPU, m.Cores, m.GOMAXPROCS)
	fmt.Fprintf(w, "- Go: %s, %s\n", m.Go, m.Platform)
}

// LoadAvg returns the first three fields of /proc/loadavg ("" elsewhere):
// other work on the machine during a run shows up here.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// ClockCost returns the cost of one monotonic clock read (time.Since), the
// unit of every timestamp the timed passes take.
func ClockCost() time.Duration {
	const n = 200_000
	t := time.Now()
	var sink time.Duration
	for range n {
		sink += time.Since(t)
	}
	el := time.Since(t)
	if sink < 0 {
		fmt.Fprint(io.Discard, sink)
	}
	return el / n
}
