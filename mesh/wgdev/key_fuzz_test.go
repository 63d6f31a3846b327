package wgdev

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// FuzzLoadKey plants arbitrary bytes in the private key file (mode 0600),
// as a crash, a truncated copy or a hand edit could leave them. LoadKey and
// LoadOrCreateKey must not panic, must refuse anything but one base64 key
// with ErrKeyEmpty or ErrKeyCorrupt, and must never replace the file: a
// node that silently got a new key would vanish from every peer. Seeds are
// in testdata/fuzz/FuzzLoadKey.
func FuzzLoadKey(f *testing.F) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(k.String() + "\n"))
	f.Add([]byte(k.String()[:20])) // truncated
	f.Add([]byte(""))
	f.Add([]byte(" \n\t"))
	f.Add([]byte(k.String() + "\n" + k.String() + "\n"))
	f.Add([]byte("\x00" + k.String()))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content []byte) {
		path := filepath.Join(dir, "private.key")
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		// The file's mode survives an existing file's WriteFile.
		if err := os.Chmod(path, 0o600); err != nil {
			t.Fatal(err)
		}
		key, err := LoadKey(path)
		got, created, cerr := LoadOrCreateKey(path)
		if after, rerr := os.ReadFile(path); rerr != nil || string(after) != string(content) {
			t.Fatalf("the key file changed under LoadOrCreateKey (read err %v)", rerr)
		}
		if created {
			t.Fatal("LoadOrCreateKey created a key over an existing file")
		}
		if err != nil {
			if !errors.Is(err, ErrKeyEmpty) && !errors.Is(err, ErrKeyCorrupt) {
				t.Fatalf("LoadKey: %v, want ErrKeyEmpty or ErrKeyCorrupt", err)
			}
			if cerr == nil || cerr.Error() != err.Error() {
				t.Fatalf("LoadOrCreateKey = %v, want the same error as LoadKey (%v)", cerr, err)
			}
			// Text that decodes as base64 may be a key with a typo: never
			// echo it (the error's own words have spaces, never base64).
			if text := strings.TrimSpace(string(content)); len(text) >= 16 && isBase64(text) && strings.Contains(err.Error(), text) {
				t.Fatalf("the error echoes the file's content: %v", err)
			}
			return
		}
		if cerr != nil || got != key {
			t.Fatalf("LoadOrCreateKey = %v, %v; LoadKey gave the key", got, cerr)
		}
		// Compare bytes, not text: base64 with non-zero trailing bits
		// decodes to the same key as its canonical spelling.
		if raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(content))); err != nil || string(raw) != string(key[:]) {
			t.Fatalf("LoadKey accepted %q as key %s", content, key)
		}
	})
}

func isBase64(s string) bool {
	_, err := base64.StdEncoding.DecodeString(s)
	return err == nil
}
