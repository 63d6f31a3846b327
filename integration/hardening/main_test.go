package hardening

import (
	"encoding/json"
	"fmt"
	"os"
	"testing"
)

// The test binary re-executes itself inside `ip netns exec` so that every
// thread of a node's process lives in the node's namespaces (wireguard-go's
// sockets must never run in a process that switched only one thread).
// roleEnv selects the role, configEnv carries its JSON configuration.
const (
	roleEnv   = "WGMESH_HARDENING_ROLE"
	configEnv = "WGMESH_HARDENING_CONFIG"
)

var roles = map[string]func(raw []byte) error{
	"node": runNodeRole,
}

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		f, ok := roles[role]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown role %q\n", role)
			os.Exit(2)
		}
		if err := f([]byte(os.Getenv(configEnv))); err != nil {
			fmt.Fprintf(os.Stderr, "role %s failed: %v\n", role, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// childEnv is the environment that makes the test binary run role with cfg.
func childEnv(role string, cfg any) ([]string, error) {
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	return []string{roleEnv + "=" + role, configEnv + "=" + string(raw)}, nil
}
