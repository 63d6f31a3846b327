package integration_test

// The import graph is part of the architecture: the core stays pure so it
// can be tested without root or a cluster, and adapters stay beside it.
// This test asks the go tool for the real graph and checks the rules; it
// needs no root.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const module = "github.com/wgmesh/wgmesh"

// listedPackage is the part of `go list -json` output the rules read.
type listedPackage struct {
	ImportPath   string
	Imports      []string // direct, production
	Deps         []string // transitive, production
	TestImports  []string
	XTestImports []string
	Error        *struct{ Err string }
	DepsErrors   []struct{ Err string }
}

// forbiddenInPure are import path prefixes the pure packages must not
// reach, even transitively: client-go, netlink, nftables, wireguard-go's
// device side and wgctrl's kernel/UAPI client (wgtypes is vocabulary and
// allowed).
var forbiddenInPure = []string{
	"k8s.io/",
	"sigs.k8s.io/",
	"github.com/vishvananda/",
	"github.com/google/nftables",
	"github.com/mdlayher/",
	"golang.zx2c4.com/wireguard/device",
	"golang.zx2c4.com/wireguard/tun",
	"golang.zx2c4.com/wireguard/conn",
	"golang.zx2c4.com/wireguard/ipc",
	"golang.zx2c4.com/wireguard/wgctrl", // but see allowedInPure
}

var allowedInPure = []string{"golang.zx2c4.com/wireguard/wgctrl/wgtypes"}

// purePackages must satisfy forbiddenInPure.
func isPure(p string) bool {
	return p == module+"/mesh" || p == module+"/mesh/meshtest" || p == module+"/mesh/nodenet" ||
		p == module+"/mesh/policy" || p == module+"/mesh/policy/policytest" ||
		p == module+"/ipam" || strings.HasPrefix(p, module+"/ipam/")
}

// meshAdapters are the packages beside the core that implement its
// interfaces with real systems. The core never imports them, and none
// imports another: what two adapters share lives outside both.
var meshAdapters = []string{
	module + "/mesh/kube", module + "/mesh/wgdev", module + "/mesh/dataplane",
	module + "/mesh/policy/kube", module + "/mesh/policy/nft",
	module + "/mesh/metrics", module + "/mesh/agentstate",
}

// agentAssembly wires core and adapters into the node agent; only commands
// and the integration harnesses may import it.
const agentAssembly = module + "/mesh/agent"

// stdlibOnly are leaves every part of wgmesh may import, the CNI plugin
// binary included, so they must not bring anything along.
var stdlibOnly = []string{module + "/mesh/nodenet"}

// isStdlib: standard library import paths have no dot in their first
// element (a module path starts with a domain).
func isStdlib(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}

func under(path, root string) bool { return path == root || strings.HasPrefix(path, root+"/") }

func matchesPrefix(path string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasSuffix(p, "/") && strings.HasPrefix(path, p) || under(path, p) {
			return true
		}
	}
	return false
}

// violations checks the rules against a listed graph and returns one line
// per broken rule, sorted.
func violations(pkgs []listedPackage) []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	for _, p := range pkgs {
		if !under(p.ImportPath, module) {
			continue
		}
		if isPure(p.ImportPath) {
			for _, d := range p.Deps {
				if matchesPrefix(d, forbiddenInPure) && !matchesPrefix(d, allowedInPure) {
					add("%s (pure) depends on %s", p.ImportPath, d)
				}
			}
			// Its own tests stay pure too (they run without root or a cluster).
			for _, d := range append(slices.Clone(p.TestImports), p.XTestImports...) {
				if matchesPrefix(d, forbiddenInPure) && !matchesPrefix(d, allowedInPure) {
					add("%s (pure) tests import %s", p.ImportPath, d)
				}
			}
		}
		if slices.Contains(stdlibOnly, p.ImportPath) {
			for _, d := range p.Deps {
				if !isStdlib(d) {
					add("%s (standard library only) depends on %s", p.ImportPath, d)
				}
			}
		}
		if p.ImportPath == module+"/mesh" {
			for _, d := range p.Deps {
				for _, a := range meshAdapters {
					if under(d, a) {
						add("%s (core) depends on adapter %s", p.ImportPath, d)
					}
				}
			}
		}
		for _, a := range meshAdapters {
			if !under(p.ImportPath, a) {
				continue
			}
			for _, d := range p.Deps {
				for _, b := range meshAdapters {
					if b != a && under(d, b) {
						add("%s (adapter) depends on adapter %s", p.ImportPath, d)
					}
				}
			}
		}
		if !under(p.ImportPath, agentAssembly) && !under(p.ImportPath, module+"/cmd") && !under(p.ImportPath, module+"/integration") {
			for _, d := range slices.Concat(p.Deps, p.TestImports, p.XTestImports) {
				if under(d, agentAssembly) {
					add("%s depends on the agent assembly %s (only cmd/* and integration/* may)", p.ImportPath, d)
				}
			}
		}
		if under(p.ImportPath, module+"/ipam") {
			for _, d := range p.Deps {
				if under(d, module+"/cni") {
					add("%s depends on %s", p.ImportPath, d)
				}
			}
		}
		if !under(p.ImportPath, module+"/cmd") {
			for _, d := range p.Deps {
				if under(d, module+"/cmd") {
					add("%s depends on command package %s", p.ImportPath, d)
				}
			}
		}
		// Libraries must not lean on test infrastructure (commands may:
		// cmd/wgmesh-lab is the lab's front end).
		if !under(p.ImportPath, module+"/integration") && !under(p.ImportPath, module+"/cmd") {
			for _, d := range p.Deps {
				if under(d, module+"/integration") {
					add("%s (product code) depends on test infrastructure %s", p.ImportPath, d)
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// goList runs `go list -e -json` on the module's packages.
func goList(t *testing.T) []listedPackage {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to read the import graph: %v", err)
	}
	var gomod bytes.Buffer
	cmd := exec.Command(goBin, "env", "GOMOD")
	cmd.Stdout = &gomod
	if err := cmd.Run(); err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(gomod.String()))

	var stdout, stderr bytes.Buffer
	cmd = exec.Command(goBin, "list", "-e", "-json=ImportPath,Imports,Deps,TestImports,XTestImports,Error,DepsErrors", "./...")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	var pkgs []listedPackage
	dec := json.NewDecoder(&stdout)
	for {
		var p listedPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func TestImportGraph(t *testing.T) {
	pkgs := goList(t)
	byPath := map[string]listedPackage{}
	for _, p := range pkgs {
		byPath[p.ImportPath] = p
	}

	// Guard against a vacuous pass: the packages the rules are about must
	// be listed, loaded without errors (else their deps are incomplete),
	// and their deps must really be there.
	for _, must := range []string{module + "/mesh", module + "/ipam"} {
		p, ok := byPath[must]
		if !ok {
			t.Fatalf("go list did not report %s", must)
		}
		if p.Error != nil {
			t.Errorf("%s does not load, its import graph cannot be checked: %s", must, p.Error.Err)
		}
		for _, e := range p.DepsErrors {
			t.Errorf("%s: dependency error, graph incomplete: %s", must, e.Err)
		}
	}
	if !slices.Contains(byPath[module+"/mesh"].Deps, "golang.zx2c4.com/wireguard/wgctrl/wgtypes") {
		t.Fatalf("mesh's dependencies do not include wgtypes; is go list reporting deps? %v", byPath[module+"/mesh"].Deps)
	}
	for _, p := range pkgs {
		if p.Error != nil {
			t.Logf("note: %s does not load (%s); its rules are checked on what go list could see", p.ImportPath, p.Error.Err)
		}
	}

	for _, v := range violations(pkgs) {
		t.Error(v)
	}
	for _, leaf := range stdlibOnly {
		if _, ok := byPath[leaf]; !ok {
			t.Errorf("go list did not report %s: the standard-library-only rule checks nothing", leaf)
		}
	}
	if _, ok := byPath[agentAssembly]; !ok {
		t.Errorf("go list did not report the agent assembly %s: the rules about it check nothing", agentAssembly)
	}
	t.Logf("checked %d packages", len(pkgs))
}

// TestImportGraphRulesCatchViolations feeds the rules a graph that breaks
// each of them, proving the real check above can fail.
func TestImportGraphRulesCatchViolations(t *testing.T) {
	m := func(s string) string { return module + "/" + s }
	pkgs := []listedPackage{
		{ImportPath: m("mesh"), Deps: []string{"golang.zx2c4.com/wireguard/wgctrl/wgtypes", "k8s.io/client-go/kubernetes", m("mesh/wgdev"), "golang.zx2c4.com/wireguard/tun"},
			XTestImports: []string{"github.com/vishvananda/netlink"}},
		{ImportPath: m("mesh/meshtest"), Deps: []string{"golang.zx2c4.com/wireguard/wgctrl"}},
		{ImportPath: m("ipam"), Deps: []string{m("cni"), "github.com/google/nftables/expr"}},
		{ImportPath: m("ipam/disk"), Deps: []string{"golang.zx2c4.com/wireguard/device"}},
		{ImportPath: m("cni"), Deps: []string{m("cmd/wgmesh-cni")}},
		{ImportPath: m("mesh/kube"), Deps: []string{"k8s.io/client-go/kubernetes", m("mesh"), m("integration/internal/netnstest")}},
		{ImportPath: m("cmd/wgmesh-agent"), Deps: []string{m("cmd/internal/flags"), m("mesh/kube"), m("mesh/agent")}},
		{ImportPath: m("cmd/wgmesh-lab"), Deps: []string{m("integration/lab")}},
		// Adapters keep to themselves; the assembly may use them all.
		{ImportPath: m("mesh/dataplane"), Deps: []string{m("mesh"), m("mesh/wgdev")}},
		{ImportPath: m("mesh/policy/kube"), Deps: []string{m("mesh/policy"), m("mesh/internal/informerrun"), m("mesh/kube/translate")}},
		{ImportPath: m("mesh/kube"), Deps: []string{m("mesh/internal/informerrun"), m("mesh/nodenet")}},
		// The leaf keeps to the standard library.
		{ImportPath: m("mesh/nodenet"), Deps: []string{"errors", "net/netip", "vendor/golang.org/x/net/dns/dnsmessage", "golang.org/x/sys/unix", m("mesh")}},
		{ImportPath: m("mesh/metrics"), Deps: []string{m("mesh"), m("mesh/agent")}},
		{ImportPath: m("mesh/agentstate/sub"), Deps: []string{m("mesh/metrics")}},
		{ImportPath: m("mesh/agent"), Deps: []string{m("mesh/kube"), m("mesh/wgdev"), m("mesh/dataplane"), m("mesh/agentstate"), m("mesh/metrics")}},
		{ImportPath: m("mesh/agent"), XTestImports: []string{m("mesh/agent")}},
		{ImportPath: m("integration/bench"), Deps: []string{m("mesh/agent"), m("mesh/kube")}},
		{ImportPath: m("mesh/policy"), XTestImports: []string{m("mesh/agent")}},
		// Look-alike paths that must not match.
		{ImportPath: m("ipamx"), Deps: []string{m("cni")}},
		{ImportPath: m("mesh/show"), Deps: []string{"k8s.io/apimachinery/pkg/types", m("mesh/agentstate"), m("mesh/agentx")}},
		{ImportPath: m("ipam/other"), Deps: []string{m("cnix"), "golang.zx2c4.com/wireguard/conntrack", "golang.zx2c4.com/wireguard/wgctrl/wgtypes"}},
		{ImportPath: m("mesh/nodenetx"), Deps: []string{"golang.org/x/sys/unix"}},
	}
	want := []string{
		m("cni") + " depends on command package " + m("cmd/wgmesh-cni"),
		m("ipam") + " (pure) depends on github.com/google/nftables/expr",
		m("ipam") + " depends on " + m("cni"),
		m("ipam/disk") + " (pure) depends on golang.zx2c4.com/wireguard/device",
		m("mesh") + " (core) depends on adapter " + m("mesh/wgdev"),
		m("mesh") + " (pure) depends on golang.zx2c4.com/wireguard/tun",
		m("mesh") + " (pure) depends on k8s.io/client-go/kubernetes",
		m("mesh") + " (pure) tests import github.com/vishvananda/netlink",
		m("mesh/agentstate/sub") + " (adapter) depends on adapter " + m("mesh/metrics"),
		m("mesh/dataplane") + " (adapter) depends on adapter " + m("mesh/wgdev"),
		m("mesh/kube") + " (product code) depends on test infrastructure " + m("integration/internal/netnstest"),
		m("mesh/meshtest") + " (pure) depends on golang.zx2c4.com/wireguard/wgctrl",
		m("mesh/metrics") + " depends on the agent assembly " + m("mesh/agent") + " (only cmd/* and integration/* may)",
		m("mesh/nodenet") + " (standard library only) depends on " + m("mesh"),
		m("mesh/nodenet") + " (standard library only) depends on golang.org/x/sys/unix",
		m("mesh/policy") + " depends on the agent assembly " + m("mesh/agent") + " (only cmd/* and integration/* may)",
		m("mesh/policy/kube") + " (adapter) depends on adapter " + m("mesh/kube/translate"),
	}
	if diff := cmp.Diff(want, violations(pkgs)); diff != "" {
		t.Errorf("violations (-want +got):\n%s", diff)
	}
}
