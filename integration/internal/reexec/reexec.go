// Package reexec lets a root test binary run parts of itself elsewhere: in
// a network namespace under `ip netns exec`, or inside a lab pod. Work that
// owns sockets (wireguard-go, TCP ends) must run there with all of its
// threads, which a Go process that switched one thread's namespace cannot
// promise. The parent starts its own binary with Env; Dispatch, called
// first in TestMain (or in an init when TestMain does more), runs the named
// role and exits.
package reexec

import (
	"encoding/json"
	"fmt"
	"os"
)

// Roles maps a role name to its entry point; config is the role's JSON.
type Roles map[string]func(config []byte) error

// Dispatch runs the role named in prefix+"_ROLE", with the configuration in
// prefix+"_CONFIG", and exits: 0 on success, 1 if the role failed, 2 for an
// unknown role. It returns at once when no role is set.
func Dispatch(prefix string, roles Roles) {
	role := os.Getenv(prefix + "_ROLE")
	if role == "" {
		return
	}
	f, ok := roles[role]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown role %q\n", role)
		os.Exit(2)
	}
	if err := f([]byte(os.Getenv(prefix + "_CONFIG"))); err != nil {
		fmt.Fprintf(os.Stderr, "role %s failed: %v\n", role, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// Env returns the environment entries that make the binary run role with
// cfg (marshalled as JSON) under Dispatch(prefix, ...).
func Env(prefix, role string, cfg any) ([]string, error) {
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("role %s config: %w", role, err)
	}
	return []string{prefix + "_ROLE=" + role, prefix + "_CONFIG=" + string(raw)}, nil
}
