package wgdev

import (
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/wgmesh/wgmesh/mesh"
)

// KeyFile is the mesh.KeyStore of a private key file: Save replaces the
// file atomically (WriteKey), so the old key is gone from the directory as
// soon as the new one is there, and no temporary copy is left behind.
type KeyFile string

var _ mesh.KeyStore = KeyFile("")

// Save stores key as the node's private key.
func (f KeyFile) Save(key wgtypes.Key) error { return WriteKey(string(f), key) }
