package wgdev

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Sentinel errors of the key file. A key file that exists but cannot be used
// is always an error: silently generating a new key would change the node's
// identity and cut it off from every peer until all of them resync.
var (
	ErrKeyEmpty       = errors.New("key file is empty")
	ErrKeyCorrupt     = errors.New("key file does not hold a base64 WireGuard key")
	ErrKeyPermissions = errors.New("key file is accessible by group or others")
)

// keyFileMode is the only mode we write, and the widest we accept.
const keyFileMode = 0o600

// LoadOrCreateKey returns the private key stored at path. If nothing exists at
// path, it generates a key, stores it (mode 0600, parent directories created
// 0700) and reports created=true. A present but unreadable, empty, corrupt or
// group/world-accessible file is an error; it is never replaced.
func LoadOrCreateKey(path string) (key wgtypes.Key, created bool, err error) {
	if path == "" {
		return wgtypes.Key{}, false, errors.New("key file path is empty")
	}
	key, err = LoadKey(path)
	if err == nil {
		return key, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return wgtypes.Key{}, false, err
	}
	// Lstat: a dangling symlink also reads as "not exist", but writing
	// through or over it would surprise whoever made it.
	if _, lerr := os.Lstat(path); lerr == nil {
		// Or another process created the key between our read and the
		// Lstat: read once more before calling it a dangling link.
		key, err = LoadKey(path)
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			return key, false, err
		}
		return wgtypes.Key{}, false, fmt.Errorf("key file %s: exists but cannot be followed: %w", path, err)
	}

	key, err = wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("generate private key: %w", err)
	}
	if err := writeKeyFile(path, key, false); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Another process created it between our read and our
			// link: theirs wins, so that both use the same key.
			key, err = LoadKey(path)
			return key, false, err
		}
		return wgtypes.Key{}, false, err
	}
	return key, true, nil
}

// LoadKey reads a private key written by LoadOrCreateKey or by `wg genkey`.
// Errors wrap fs.ErrNotExist when the file is missing.
func LoadKey(path string) (wgtypes.Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("load key: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("stat key file %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return wgtypes.Key{}, fmt.Errorf("key file %s: not a regular file (%s)", path, st.Mode().Type())
	}
	if st.Mode().Perm()&^keyFileMode != 0 {
		return wgtypes.Key{}, fmt.Errorf("key file %s has mode %#o, want 0600 (chmod 600 it): %w",
			path, st.Mode().Perm(), ErrKeyPermissions)
	}
	// A key is 44 base64 characters; read a little more to notice junk
	// without slurping a huge wrong file.
	buf := make([]byte, 256)
	n, err := readFull(f, buf)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("read key file %s: %w", path, err)
	}
	text := strings.TrimSpace(string(buf[:n]))
	if text == "" {
		return wgtypes.Key{}, fmt.Errorf("key file %s: %w", path, ErrKeyEmpty)
	}
	// Never echo the content: it may be a valid key with a typo.
	key, err := wgtypes.ParseKey(text)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("key file %s: %w", path, ErrKeyCorrupt)
	}
	return key, nil
}

// readFull reads until buf is full or the file ends.
func readFull(r io.Reader, buf []byte) (int, error) {
	n, err := io.ReadFull(r, buf)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return n, nil
	}
	return n, err
}

// WriteKey atomically stores key at path, replacing any existing file (key
// rotation). The file is never observable half-written.
func WriteKey(path string, key wgtypes.Key) error {
	return writeKeyFile(path, key, true)
}

// writeKeyFile writes to a temporary file in the same directory, fsyncs it,
// and moves it into place: by rename when replacing, by link when creating
// (link fails with EEXIST instead of clobbering a concurrently created key).
func writeKeyFile(path string, key wgtypes.Key, replace bool) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create key directory: %w", err)
	}
	// os.CreateTemp creates with mode 0600.
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temporary key file: %w", err)
	}
	tmpName := tmp.Name()
	defer func() {
		if tmp != nil {
			tmp.Close()
		}
		os.Remove(tmpName) // after a link the key stays reachable by path
	}()
	if err := tmp.Chmod(keyFileMode); err != nil {
		return fmt.Errorf("chmod temporary key file: %w", err)
	}
	if _, err := tmp.WriteString(key.String() + "\n"); err != nil {
		return fmt.Errorf("write temporary key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync temporary key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		tmp = nil
		return fmt.Errorf("close temporary key file: %w", err)
	}
	tmp = nil
	if replace {
		if err := os.Rename(tmpName, path); err != nil {
			return fmt.Errorf("install key file: %w", err)
		}
	} else if err := os.Link(tmpName, path); err != nil {
		return fmt.Errorf("install key file: %w", err)
	}
	return syncDir(dir)
}

// syncDir makes the directory entry durable, so a crash right after start-up
// cannot lose a key we have already published.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open key directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync key directory: %w", err)
	}
	return nil
}
