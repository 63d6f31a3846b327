package main

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	// WriteFile's mode is filtered by the umask; tests need the exact mode.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

// dirEntries lists a directory so a test can prove no temporary file is left.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestInstall(t *testing.T) {
	tests := []struct {
		name        string
		existing    string      // content of dst before, "" = absent
		existingMod os.FileMode // its mode
		wantChanged bool
	}{
		{name: "fresh", wantChanged: true},
		{name: "replace older", existing: "old plugin", existingMod: 0o755, wantChanged: true},
		{name: "identical is left alone", existing: "new plugin", existingMod: 0o755, wantChanged: false},
		{name: "identical but not executable", existing: "new plugin", existingMod: 0o644, wantChanged: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srcDir, dstDir := t.TempDir(), t.TempDir()
			src := filepath.Join(srcDir, "wgmesh")
			dst := filepath.Join(dstDir, "wgmesh")
			writeFile(t, src, "new plugin", 0o700)
			var before uint64
			if tt.existing != "" {
				writeFile(t, dst, tt.existing, tt.existingMod)
				before = inode(t, dst)
			}

			changed, err := install(src, dst)
			if err != nil {
				t.Fatalf("install: %v", err)
			}
			if changed != tt.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tt.wantChanged)
			}
			got, err := os.ReadFile(dst)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != "new plugin" {
				t.Errorf("dst content = %q, want %q", got, "new plugin")
			}
			st, err := os.Stat(dst)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o755 {
				t.Errorf("dst mode = %v, want 0755", st.Mode().Perm())
			}
			// A replacement must be a new inode (rename), never the old file
			// rewritten in place under a running plugin.
			if tt.existing != "" {
				after := inode(t, dst)
				if tt.wantChanged && after == before {
					t.Errorf("dst was rewritten in place (inode %d kept), want a rename", before)
				}
				if !tt.wantChanged && after != before {
					t.Errorf("identical dst was replaced (inode %d -> %d)", before, after)
				}
			}
			if names := dirEntries(t, dstDir); len(names) != 1 || names[0] != "wgmesh" {
				t.Errorf("dst dir holds %v, want only [wgmesh]", names)
			}
		})
	}
}

// A process that has the old binary open (as a running plugin does) keeps
// reading the old content after the install.
func TestInstallKeepsOpenOldFile(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	writeFile(t, src, "version 2", 0o755)
	writeFile(t, dst, "version 1", 0o755)
	old, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if _, err := install(src, dst); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 32)
	n, _ := old.ReadAt(buf, 0)
	if string(buf[:n]) != "version 1" {
		t.Errorf("open old file reads %q, want %q", buf[:n], "version 1")
	}
}

func TestInstallErrors(t *testing.T) {
	t.Run("missing source leaves dst untouched", func(t *testing.T) {
		dir := t.TempDir()
		dst := filepath.Join(dir, "wgmesh")
		writeFile(t, dst, "old", 0o755)
		if _, err := install(filepath.Join(dir, "nope"), dst); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("err = %v, want ErrNotExist", err)
		}
		if got, _ := os.ReadFile(dst); string(got) != "old" {
			t.Errorf("dst = %q, want untouched %q", got, "old")
		}
	})
	t.Run("source is a directory", func(t *testing.T) {
		dir := t.TempDir()
		if _, err := install(dir, filepath.Join(t.TempDir(), "wgmesh")); !errors.Is(err, errNotRegular) {
			t.Fatalf("err = %v, want errNotRegular", err)
		}
	})
	t.Run("missing destination directory", func(t *testing.T) {
		dir := t.TempDir()
		src := filepath.Join(dir, "src")
		writeFile(t, src, "x", 0o755)
		if _, err := install(src, filepath.Join(dir, "no", "such", "wgmesh")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("err = %v, want ErrNotExist", err)
		}
	})
	t.Run("destination is a directory: temp file removed", func(t *testing.T) {
		dir := t.TempDir()
		src := filepath.Join(dir, "src")
		writeFile(t, src, "x", 0o755)
		dstDir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dstDir, "wgmesh"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dstDir, "wgmesh", "f"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := install(src, filepath.Join(dstDir, "wgmesh")); err == nil {
			t.Fatal("install over a non-empty directory succeeded")
		}
		if names := dirEntries(t, dstDir); len(names) != 1 || names[0] != "wgmesh" {
			t.Errorf("dst dir holds %v after failure, want only [wgmesh] (no temp file)", names)
		}
	})
}
