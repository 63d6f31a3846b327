// Package policy_test is the root suite for wgmesh's NetworkPolicy
// dataplane (mesh/policy/nft) on the real kernel: a node namespace with the
// pod bridge, pod namespaces on it and a "remote node" namespace routed
// like the WireGuard tunnel; traffic only ever flows between those
// namespaces. It needs root and fails, never skips, without it.
//
// The test binary doubles as the helper processes it runs inside the
// namespaces (POLICY_HELPER=serve|connect|apply), so no extra tools are
// needed.
package policy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/wgmesh/wgmesh/integration/internal/echo"
	"github.com/wgmesh/wgmesh/mesh/policy"
	"github.com/wgmesh/wgmesh/mesh/policy/nft"
)

func TestMain(m *testing.M) {
	switch os.Getenv("POLICY_HELPER") {
	case "":
		os.Exit(m.Run())
	case "serve":
		os.Exit(echo.Serve(os.Args[1:]))
	case "connect":
		os.Exit(echo.Connect(os.Args[1:]))
	case "apply":
		os.Exit(applyHelper(os.Stdin))
	default:
		fmt.Fprintln(os.Stderr, "unknown POLICY_HELPER")
		os.Exit(2)
	}
}

// applyRequest is what the apply helper reads from stdin.
type applyRequest struct {
	Ruleset              policy.Ruleset
	LeaveBridgeNetfilter bool
	Remove               bool
}

func applyHelper(r io.Reader) int {
	var req applyRequest
	if err := json.NewDecoder(r).Decode(&req); err != nil {
		fmt.Println("decode:", err)
		return 2
	}
	dp, err := nft.New(nft.Config{LeaveBridgeNetfilter: req.LeaveBridgeNetfilter,
		Logger: slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	start := time.Now()
	if req.Remove {
		err = dp.Remove()
	} else {
		err = dp.Apply(context.Background(), req.Ruleset)
	}
	fmt.Printf("apply took %d us\n", time.Since(start).Microseconds())
	if err != nil {
		fmt.Println("apply:", err)
		if errors.Is(err, context.Canceled) {
			return 3
		}
		return 1
	}
	return 0
}
