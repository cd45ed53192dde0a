package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warrenmq/warren/internal/brokertest"
)

// exampleProof is, for each runnable example in ../examples, a string its
// output must contain: the line that proves the example's point.
var exampleProof = map[string]string{
	"quickstart": "was closed by the broker: code 404",
	"producer":   "nacked=1 unroutable=1 unknown=0",
	"consumer":   "(stop cause: all 200 messages handled)",
	"txmove":     "rolled back: simulated failure after publish and ack",
	"httppool":   "requests got 202 Accepted only after the broker acked",
	"reconnect":  "every acked publish is there",
	"rpc":        "every reply matched its request (400 of 400)",
}

// exampleTimeout bounds one example, build included.
const exampleTimeout = 2 * time.Minute

// TestExamples runs every example as a user would, `go run ./examples/<name>`
// from the root module, one after the other, against the test broker:
// AMQP_URL is set, so brokertest.Find in the example uses it as is (no
// probe of the local default broker, no node of its own, and Stop leaves
// it alone). Each must exit 0 and print its proof line.
func TestExamples(t *testing.T) {
	b := brokertest.Need(t, broker)
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command to run the examples with: %v", err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(wd) // the integration module lives in the root module's directory
	dirs, err := filepath.Glob(filepath.Join(root, "examples", "*", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Fatalf("no examples under %s", filepath.Join(root, "examples"))
	}
	seen := map[string]bool{}
	for _, mainGo := range dirs {
		name := filepath.Base(filepath.Dir(mainGo))
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			proof, ok := exampleProof[name]
			if !ok {
				t.Fatalf("examples/%s has no entry in exampleProof: add the output line that proves its point", name)
			}
			ctx, cancel := context.WithTimeout(context.Background(), exampleTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, goTool, "run", "./examples/"+name)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "AMQP_URL="+b.URL)
			cmd.WaitDelay = 10 * time.Second // the output pipe may outlive a killed `go run`
			start := time.Now()
			out, err := cmd.CombinedOutput()
			t.Logf("go run ./examples/%s (%v):\n%s", name, time.Since(start).Round(time.Millisecond), out)
			if ctx.Err() != nil {
				t.Fatalf("examples/%s did not finish within %v", name, exampleTimeout)
			}
			if err != nil {
				t.Fatalf("examples/%s: %v", name, err)
			}
			if !strings.Contains(string(out), proof) {
				t.Errorf("examples/%s: output lacks %q", name, proof)
			}
			if !strings.Contains(string(out), "brokertest: using AMQP_URL") {
				t.Errorf("examples/%s did not use the test broker from AMQP_URL", name)
			}
		})
	}
	for name := range exampleProof {
		if !seen[name] {
			t.Errorf("exampleProof lists %q, but examples/%s/main.go does not exist", name, name)
		}
	}
}

// warrentestExample is the runnable example of the warrentest module that
// TestWarrentestExample runs, and the line its verbose output must hold.
const warrentestExample = "Example_consumerAcrossAConnectionCut"

// TestWarrentestExample runs the examples of the warrentest module (its
// own module: `go test -run ^Example` in ../warrentest) against the test
// broker, passed as AMQP_URL: each must pass, and the one that tests a
// consumer across a connection cut must be among them.
func TestWarrentestExample(t *testing.T) {
	b := brokertest.Need(t, broker)
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command to run the examples with: %v", err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*exampleTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "test", "-count=1", "-run", "^Example", "-v", ".")
	cmd.Dir = filepath.Join(filepath.Dir(wd), "warrentest")
	cmd.Env = append(os.Environ(), "AMQP_URL="+b.URL)
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("go test -run ^Example in warrentest (%v):\n%s", time.Since(start).Round(time.Millisecond), out)
	if ctx.Err() != nil {
		t.Fatalf("the warrentest examples did not finish within %v", 2*exampleTimeout)
	}
	if err != nil {
		t.Fatalf("the warrentest examples: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: "+warrentestExample) {
		t.Errorf("the output lacks --- PASS: %s", warrentestExample)
	}
	if !strings.Contains(string(out), "warrentest: using AMQP_URL") {
		t.Errorf("the warrentest examples did not use the test broker from AMQP_URL")
	}
}
