// Package deploy ships wgmesh's Kubernetes manifests. They are embedded so
// that the lab and the end-to-end tests apply exactly the files users apply
// (`kubectl apply -k deploy/`), never a copy that could drift.
package deploy

import "embed"

// Base holds base/*.yaml.
//
//go:embed base/*.yaml
var Base embed.FS

// LabOverlay holds overlays/lab/*.yaml (the real-node lab applies it with
// Base beside it, as `kubectl apply -k deploy/overlays/lab`).
//
//go:embed base/*.yaml overlays/lab/*.yaml
var LabOverlay embed.FS
