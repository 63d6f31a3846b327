package wgdev

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestLoadOrCreateKeyCreatesOnceWithTightModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "wgmesh")
	path := filepath.Join(dir, "private.key")

	key, created, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatalf("LoadOrCreateKey: %v", err)
	}
	if !created {
		t.Fatalf("created = false on an absent file")
	}
	if key == (wgtypes.Key{}) {
		t.Fatalf("got zero key")
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != 0o600 {
		t.Errorf("key file mode = %#o, want 0600", got)
	}
	dst, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := dst.Mode().Perm(); got != 0o700 {
		t.Errorf("key dir mode = %#o, want 0700", got)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(raw)); got != key.String() {
		t.Errorf("file does not hold the returned key")
	}
	assertNoTempFiles(t, dir)

	again, created, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatalf("second LoadOrCreateKey: %v", err)
	}
	if created {
		t.Errorf("created = true on second call")
	}
	if again != key {
		t.Errorf("second call returned a different key")
	}
}

func TestLoadOrCreateKeyLoadsWgGenkeyFormat(t *testing.T) {
	want, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "private.key")
	// `wg genkey > file` writes base64 plus a newline.
	if err := os.WriteFile(path, []byte(want.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, created, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatalf("LoadOrCreateKey: %v", err)
	}
	if created || got != want {
		t.Errorf("got created=%v key-equal=%v, want false true", created, got == want)
	}
}

func TestLoadOrCreateKeyRefusesBadFiles(t *testing.T) {
	valid, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	secretLooking := "c2VjcmV0LXRoYXQtbXVzdC1ub3QtYmUtbG9nZ2Vk" // 40 chars, not a key
	tests := []struct {
		name    string
		setup   func(t *testing.T, path string)
		wantErr error // nil: only "some error"
	}{
		{
			name:    "empty",
			setup:   writeFile("", 0o600),
			wantErr: ErrKeyEmpty,
		},
		{
			name:    "whitespace only",
			setup:   writeFile(" \n\t\n", 0o600),
			wantErr: ErrKeyEmpty,
		},
		{
			name:    "not base64",
			setup:   writeFile("this is not a key!!\n", 0o600),
			wantErr: ErrKeyCorrupt,
		},
		{
			name:    "base64 of the wrong length",
			setup:   writeFile(secretLooking+"\n", 0o600),
			wantErr: ErrKeyCorrupt,
		},
		{
			name:    "two keys",
			setup:   writeFile(valid.String()+"\n"+valid.String()+"\n", 0o600),
			wantErr: ErrKeyCorrupt,
		},
		{
			name:    "world readable",
			setup:   writeFile(valid.String()+"\n", 0o644),
			wantErr: ErrKeyPermissions,
		},
		{
			name:    "group readable",
			setup:   writeFile(valid.String()+"\n", 0o640),
			wantErr: ErrKeyPermissions,
		},
		{
			name: "directory in its place",
			setup: func(t *testing.T, path string) {
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			// Reading /proc/self/mem at offset 0 fails with EIO even
			// for root (mode bits would not stop root): a present
			// file whose read fails.
			name: "read fails",
			setup: func(t *testing.T, path string) {
				if err := os.Symlink("/proc/self/mem", path); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "dangling symlink",
			setup: func(t *testing.T, path string) {
				if err := os.Symlink(filepath.Join(filepath.Dir(path), "gone"), path); err != nil {
					t.Fatal(err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "private.key")
			tt.setup(t, path)
			before := snapshot(t, dir)

			key, created, err := LoadOrCreateKey(path)
			if err == nil {
				t.Fatalf("LoadOrCreateKey succeeded (created=%v), want error", created)
			}
			t.Logf("error: %v", err)
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error = %v, want %v", err, tt.wantErr)
			}
			if key != (wgtypes.Key{}) {
				t.Errorf("returned a key alongside the error")
			}
			if strings.Contains(err.Error(), secretLooking) || strings.Contains(err.Error(), valid.String()) {
				t.Errorf("error leaks the file content: %v", err)
			}
			if after := snapshot(t, dir); after != before {
				t.Errorf("directory changed on error:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func TestLoadOrCreateKeyConcurrentCallersAgree(t *testing.T) {
	path := filepath.Join(t.TempDir(), "private.key")
	const n = 8
	keys := make([]wgtypes.Key, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keys[i], _, errs[i] = LoadOrCreateKey(path)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if keys[i] != keys[0] {
			t.Fatalf("caller %d got a different key than caller 0", i)
		}
	}
	assertNoTempFiles(t, filepath.Dir(path))
}

func TestWriteKeyReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "private.key")
	old, _, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	next, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteKey(path, next); err != nil {
		t.Fatalf("WriteKey: %v", err)
	}
	got, err := LoadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != next || got == old {
		t.Errorf("file does not hold the new key")
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode after replace = %#o", st.Mode().Perm())
	}
	assertNoTempFiles(t, dir)
}

func writeFile(content string, mode os.FileMode) func(*testing.T, string) {
	return func(t *testing.T, path string) {
		if err := os.WriteFile(path, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		// WriteFile's mode is filtered by the umask.
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
}

// snapshot describes the directory's entries, modes and contents.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(e.Name() + " " + st.Mode().String())
		if st.Mode().IsRegular() {
			raw, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b.WriteString(" " + string(raw))
		}
		b.WriteString("; ")
	}
	return b.String()
}

func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}
