// Package cniclients drives the conflist the agent writes through the libcni
// releases that container runtimes ship, against the built plugin: libcni
// 1.1.x (containerd 1.7), 1.2.x (containerd 2.0, CRI-O) and 1.3.x
// (containerd 2.1 and later). Each libcni is linked into its own build of
// the small client in client/, a separate module pinned to exactly that
// release (go.mod, libcni-v1.2.mod, libcni-v1.1.mod): a module that also
// required this one would be lifted to this module's libcni by minimal
// version selection. The tests need root (network namespaces) and fail
// without it.
package cniclients

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// libcniClient is one build of client/ against one libcni release.
type libcniClient struct {
	name    string // subtest name
	libcni  string // the module version the build must link
	modfile string // go.mod of client/ when empty
	tags    string
	// listVersion is the cniVersion this libcni runs the conflist at: the
	// highest of "cniVersions" it implements, or (before 1.2, which has no
	// cniVersions) "cniVersion".
	listVersion string
	// statusGC: the library has GetStatusNetworkList and GCNetworkList.
	statusGC bool
	bin      string // built binary
}

var clients = []*libcniClient{
	{name: "libcni-v1.1", libcni: "v1.1.2", modfile: "libcni-v1.1.mod", tags: "libcni_v1_1", listVersion: "1.0.0"},
	{name: "libcni-v1.2", libcni: "v1.2.3", modfile: "libcni-v1.2.mod", listVersion: "1.1.0", statusGC: true},
	{name: "libcni-v1.3", libcni: "v1.3.0", listVersion: "1.1.0", statusGC: true},
}

// binDir holds the plugin (wgmesh from cmd/wgmesh-cni) and the clients.
var (
	binDir   string
	buildErr error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "wgmesh-cniclients-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	binDir = dir
	buildErr = build(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func build(dir string) error {
	plugin := exec.Command("go", "build", "-o", filepath.Join(dir, "wgmesh"), "github.com/wgmesh/wgmesh/cmd/wgmesh-cni")
	plugin.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := plugin.CombinedOutput(); err != nil {
		return fmt.Errorf("go build cmd/wgmesh-cni: %v\n%s", err, out)
	}
	for _, c := range clients {
		c.bin = filepath.Join(dir, "cniclient-"+c.name)
		out, err := goBuildClient(c.modfile, c.tags, c.bin)
		if err != nil {
			return fmt.Errorf("build client for %s: %v\n%s", c.name, err, out)
		}
	}
	return nil
}

// goBuildClient builds client/ with the given go.mod and build tags.
func goBuildClient(modfile, tags, out string) ([]byte, error) {
	args := []string{"build", "-o", out}
	if modfile != "" {
		args = append(args, "-modfile", modfile)
	}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Dir = "client"
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	return cmd.CombinedOutput()
}
