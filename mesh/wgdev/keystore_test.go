package wgdev

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestKeyFileRotationLeavesNoOldKey: after a rotation through KeyFile the
// directory holds exactly the key file, mode 0600, with the new key, and
// no file in it contains the old key in any encoding.
func TestKeyFileRotationLeavesNoOldKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "private.key")
	old, _, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	store := KeyFile(path)
	var next wgtypes.Key
	for range 3 {
		if next, err = wgtypes.GeneratePrivateKey(); err != nil {
			t.Fatal(err)
		}
		if err := store.Save(next); err != nil {
			t.Fatalf("Save: %v", err)
		}
	}
	got, err := LoadKey(path)
	if err != nil || got != next {
		t.Fatalf("LoadKey after rotation = (equal to new key: %v), %v", got == next, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "private.key" {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %v, want only private.key", names)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %#o, want 0600", st.Mode().Perm())
	}
	for _, e := range entries {
		raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, enc := range [][]byte{[]byte(old.String()), []byte(hex.EncodeToString(old[:])), old[:]} {
			if bytes.Contains(raw, enc) {
				t.Errorf("%s still contains the old private key", e.Name())
			}
		}
	}
}

// TestKeyFileSaveFailureKeepsOldKey: a Save that cannot complete leaves
// the old key file untouched and no temporary file.
func TestKeyFileSaveFailureKeepsOldKey(t *testing.T) {
	if os.Geteuid() == 0 {
		// Root ignores directory permissions; make the target a
		// directory instead, which rename cannot replace.
		dir := t.TempDir()
		path := filepath.Join(dir, "private.key")
		if err := os.Mkdir(path, 0o700); err != nil {
			t.Fatal(err)
		}
		k, _ := wgtypes.GeneratePrivateKey()
		if err := KeyFile(path).Save(k); err == nil {
			t.Fatal("Save over a directory succeeded")
		}
		assertNoTempFiles(t, dir)
		return
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "private.key")
	old, _, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o700) })
	k, _ := wgtypes.GeneratePrivateKey()
	if err := KeyFile(path).Save(k); err == nil {
		t.Fatal("Save into a read-only directory succeeded")
	}
	if got, err := LoadKey(path); err != nil || got != old {
		t.Errorf("old key damaged by a failed Save: %v", err)
	}
	assertNoTempFiles(t, dir)
}
