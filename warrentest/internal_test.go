package warrentest

import (
	"context"
	"slices"
	"testing"
	"time"
)

func TestParseVersion(t *testing.T) {
	for raw, want := range map[string]Version{
		"3.10.8":     {3, 10, 8, "3.10.8"},
		"4.3.6":      {4, 3, 6, "4.3.6"},
		"4.3.0-rc.1": {4, 3, 0, "4.3.0-rc.1"},
		"4.1":        {4, 1, 0, "4.1"},
	} {
		got, err := parseVersion(raw)
		if err != nil || got != want {
			t.Errorf("parseVersion(%q) = %+v, %v; want %+v", raw, got, err, want)
		}
	}
	for _, raw := range []string{"", "4", "four.3", "4.x.1", "4.3.x"} {
		if v, err := parseVersion(raw); err == nil {
			t.Errorf("parseVersion(%q) = %+v, want an error", raw, v)
		}
	}
	v := Version{4, 3, 6, "4.3.6"}
	if !v.matches("4.3") || !v.matches("4") || v.matches("4.30") || v.matches("3") || !v.AtLeast(4, 0) || !v.AtLeast(3, 10) || v.AtLeast(4, 4) || v.String() != "4.3.6" {
		t.Errorf("4.3.6: matches/AtLeast/String disagree with the version")
	}
}

func TestConnectionPidsPicksTheNamedConnections(t *testing.T) {
	// As rabbitmqctl 3.10 and 4.3 print them (abridged), with a warning
	// line first.
	out := "Listing connections ...\n" +
		`<rabbit@host.1.2345.0>` + "\t" + `[{"capabilities",[{"basic.nack",true}]},{"connection_name","svc-a"},{"product","warren"}]` + "\n" +
		`<rabbit@host.1.2346.0>` + "\t" + `[{"connection_name","svc-ab"}]` + "\n" +
		`<rabbit@host.1.2347.0>` + "\t" + `[{"product","other"}]` + "\n" +
		`<rabbit@host.1.2348.0>` + "\t" + `[{"connection_name","svc-a"}]` + "\n"
	got := connectionPids(out, "svc-a")
	want := []string{"<rabbit@host.1.2345.0>", "<rabbit@host.1.2348.0>"}
	if !slices.Equal(got, want) {
		t.Errorf("connectionPids(svc-a) = %v, want %v", got, want)
	}
	if got := connectionPids(out, "svc"); len(got) != 0 {
		t.Errorf("connectionPids(svc) = %v, want none (names match whole)", got)
	}
}

func TestCheckLocalEngineRefusesARemoteEngine(t *testing.T) {
	for host, ok := range map[string]bool{
		"unix:///var/run/docker.sock": true,
		"tcp://127.0.0.1:2375":        true,
		"tcp://localhost:2376":        true,
		"tcp://10.0.0.5:2375":         false,
		"tcp://docker.example:2376":   false,
	} {
		if err := checkLocalEngine(host); (err == nil) != ok {
			t.Errorf("checkLocalEngine(%q) = %v, want ok=%v", host, err, ok)
		}
	}
}

// The Docker check answers within its bound whether or not an engine runs,
// so that a machine without one falls through to the skip quickly.
func TestDockerCheckAnswersQuickly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	err := dockerAnswers(ctx)
	took := time.Since(start)
	t.Logf("Docker check after %v: %v", took, err)
	if limit := dockerCheckTimeout + time.Second; took > limit {
		t.Errorf("Docker check took %v, want at most %v", took, limit)
	}
}
