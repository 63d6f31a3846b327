// Command install-cni installs a CNI plugin binary into the host's CNI bin
// directory. The wgmesh DaemonSet runs it as an init container; the image has
// no shell, so this is its `cp` + `mv`.
//
// The new binary is written to a temporary file in the destination directory,
// synced, made executable and renamed over the old one: a runtime that runs
// the plugin at any moment sees either the old or the new file, never a
// partial one, and a plugin process still running keeps the old inode.
package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
)

func main() {
	src := flag.String("src", "/wgmesh", "plugin binary to install")
	dst := flag.String("dst", "/host/opt/cni/bin/wgmesh", "destination path (its directory must exist)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	changed, err := install(*src, *dst)
	if err != nil {
		log.Error("install cni plugin failed", "src", *src, "dst", *dst, "err", err)
		os.Exit(1)
	}
	if changed {
		log.Info("installed cni plugin", "src", *src, "dst", *dst)
	} else {
		log.Info("cni plugin already up to date", "dst", *dst)
	}
}

// errNotRegular rejects a source that is not a plain file (a directory or a
// device would otherwise be "copied" into something that cannot run).
var errNotRegular = errors.New("not a regular file")

// install copies src to dst atomically and reports whether dst changed. An
// identical dst is left alone, so restarts do not churn the host's file.
func install(src, dst string) (changed bool, err error) {
	in, err := os.Open(src)
	if err != nil {
		return false, fmt.Errorf("open source: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return false, fmt.Errorf("stat source: %w", err)
	}
	if !st.Mode().IsRegular() {
		return false, fmt.Errorf("source %s: %w", src, errNotRegular)
	}
	srcSum, err := sum(in)
	if err != nil {
		return false, fmt.Errorf("read source: %w", err)
	}
	if same, err := sameContent(dst, srcSum); err != nil {
		return false, err
	} else if same {
		return false, nil
	}
	if _, err := in.Seek(0, io.SeekStart); err != nil {
		return false, fmt.Errorf("rewind source: %w", err)
	}

	dir := filepath.Dir(dst)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return false, fmt.Errorf("create temporary file: %w", err)
	}
	// Until the rename succeeds the temporary file is ours to remove.
	renamed := false
	defer func() {
		if !renamed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, in); err != nil {
		return false, fmt.Errorf("copy to %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		return false, fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return false, fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return false, fmt.Errorf("rename into place: %w", err)
	}
	renamed = true
	// Persist the rename itself; losing it on a crash would bring back the
	// old binary (or none) without anyone noticing.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return true, nil
}

func sum(r io.Reader) ([]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// sameContent reports whether path is an executable regular file holding
// exactly the content with the given digest. A missing file is not an error.
func sameContent(path string, want []byte) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open destination: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("stat destination: %w", err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm() != 0o755 {
		return false, nil
	}
	got, err := sum(f)
	if err != nil {
		return false, fmt.Errorf("read destination: %w", err)
	}
	return bytes.Equal(got, want), nil
}
