//go:build race

package nft

// raceEnabled: the race detector multiplies CPU time several times over.
const raceEnabled = true
