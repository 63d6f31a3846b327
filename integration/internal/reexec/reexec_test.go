package reexec

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

const prefix = "WGMESH_REEXEC_TEST"

// TestMain dispatches like the suites that use this package do.
func TestMain(m *testing.M) {
	Dispatch(prefix, Roles{
		"echo": func(cfg []byte) error { os.Stdout.Write(cfg); return nil },
		"fail": func([]byte) error { return os.ErrInvalid },
	})
	os.Exit(m.Run())
}

func TestDispatch(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		role     string
		cfg      any
		wantCode int
		wantOut  string
	}{
		{role: "echo", cfg: map[string]int{"a": 1}, wantOut: `{"a":1}`},
		{role: "fail", cfg: nil, wantCode: 1, wantOut: "role fail failed: invalid argument"},
		{role: "nope", cfg: nil, wantCode: 2, wantOut: `unknown role "nope"`},
	} {
		t.Run(tc.role, func(t *testing.T) {
			env, err := Env(prefix, tc.role, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(self, "-test.run=^$")
			cmd.Env = append(os.Environ(), env...)
			out, err := cmd.CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode || !strings.Contains(string(out), tc.wantOut) {
				t.Errorf("exit %d, output %q; want exit %d with %q", code, out, tc.wantCode, tc.wantOut)
			}
		})
	}
}

func TestEnvRejectsUnmarshallable(t *testing.T) {
	if _, err := Env(prefix, "echo", func() {}); err == nil {
		t.Fatal("Env accepted a func config")
	}
}
