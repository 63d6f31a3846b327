//go:build !linux

package nft

import (
	"context"

	"github.com/wgmesh/wgmesh/mesh/policy"
)

// Dataplane is unavailable off Linux.
type Dataplane struct{}

// New fails off Linux.
func New(Config) (*Dataplane, error) { return nil, ErrUnsupported }

// Apply fails off Linux.
func (*Dataplane) Apply(context.Context, policy.Ruleset) error { return ErrUnsupported }

// Remove fails off Linux.
func (*Dataplane) Remove() error { return ErrUnsupported }
