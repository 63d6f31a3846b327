// Command cniclient drives a CNI network the way a container runtime does,
// through the libcni it is built with, so one source tests the plugin
// against several libcni releases: integration/cniclients builds it once per
// libcni (go.mod: v1.3.x; libcni-v1.2.mod and libcni-v1.1.mod with
// -modfile, the latter with -tags libcni_v1_1) and runs it inside a node's
// network namespace, where the plugins it forks then run.
//
//	cniclient -conf-dir D -bin-dir B -cache-dir C [-id ID -netns P -ifname I] VERB
//
// VERB is version, add, check, del, raw VERB (the plugin run directly with
// the config libcni would send, for verbs this libcni lacks), and with
// libcni >= 1.2 status and gc (-valid id/ifname,...). It prints one JSON
// Report line. A failing verb is reported in it, not by the exit status,
// which is 2 only when the command line is wrong.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
)

// Report is what one run found.
type Report struct {
	// Libcni is the version of github.com/containernetworking/cni linked in.
	Libcni string `json:"libcni"`
	// ListVersion is the cniVersion libcni runs the network at.
	ListVersion string `json:"listVersion,omitempty"`
	// Supported is the plugin's VERSION answer (verb version).
	Supported []string `json:"supported,omitempty"`
	// Result is ADD's result as libcni parsed it, marshalled again.
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Error is a failed verb: Code is the plugin's CNI error code, 0 when the
// error came from libcni itself (such as a result it cannot parse).
type Error struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
}

// client is one invocation's setup.
type client struct {
	cni   *libcni.CNIConfig
	list  *libcni.NetworkConfigList
	rt    *libcni.RuntimeConf
	valid string
}

// verbs maps a verb to what it does; status.go adds STATUS and GC where
// libcni has them.
var verbs = map[string]func(ctx context.Context, c *client, args []string, r *Report) error{
	"version": func(ctx context.Context, c *client, _ []string, r *Report) error {
		info, err := c.cni.GetVersionInfo(ctx, c.list.Plugins[0].Network.Type)
		if err == nil {
			r.Supported = info.SupportedVersions()
		}
		return err
	},
	"add": func(ctx context.Context, c *client, _ []string, r *Report) error {
		res, err := c.cni.AddNetworkList(ctx, c.list, c.rt)
		if err != nil {
			return err
		}
		r.Result, err = json.Marshal(res)
		return err
	},
	"check": func(ctx context.Context, c *client, _ []string, _ *Report) error {
		return c.cni.CheckNetworkList(ctx, c.list, c.rt)
	},
	"del": func(ctx context.Context, c *client, _ []string, _ *Report) error {
		return c.cni.DelNetworkList(ctx, c.list, c.rt)
	},
	"raw": func(ctx context.Context, c *client, args []string, _ *Report) error {
		if len(args) != 1 {
			return usageError("raw takes one CNI verb, e.g. raw STATUS")
		}
		// What libcni hands the first plugin: its config with the
		// network's name and cniVersion injected.
		conf, err := libcni.InjectConf(c.list.Plugins[0], map[string]any{"name": c.list.Name, "cniVersion": c.list.CNIVersion})
		if err != nil {
			return err
		}
		path, err := invoke.FindInPath(conf.Network.Type, c.cni.Path)
		if err != nil {
			return err
		}
		a := &invoke.Args{Command: args[0], ContainerID: c.rt.ContainerID, NetNS: c.rt.NetNS, IfName: c.rt.IfName, Path: c.cni.Path[0]}
		return invoke.ExecPluginWithoutResult(ctx, path, conf.Bytes, a, nil)
	},
}

type usageError string

func (e usageError) Error() string { return string(e) }

func main() {
	confDir := flag.String("conf-dir", "", "CNI conf dir holding the conflist")
	network := flag.String("network", "wgmesh", "network name in the conflist")
	binDir := flag.String("bin-dir", "", "CNI bin dir")
	cacheDir := flag.String("cache-dir", "", "libcni's cache dir")
	id := flag.String("id", "", "container ID")
	netns := flag.String("netns", "", "pod network namespace path")
	ifname := flag.String("ifname", "eth0", "interface name in the pod")
	valid := flag.String("valid", "", "gc: valid attachments, id/ifname,...")
	timeout := flag.Duration("timeout", time.Minute, "bound on the verb")
	flag.Parse()
	if flag.NArg() < 1 || *confDir == "" || *binDir == "" || *cacheDir == "" {
		fail(usageError("usage: cniclient -conf-dir D -bin-dir B -cache-dir C [flags] VERB"))
	}
	verb := verbs[flag.Arg(0)]
	if verb == nil {
		fail(usageError(fmt.Sprintf("unknown verb %q for this libcni", flag.Arg(0))))
	}
	if flag.NArg() > 1 && flag.Arg(0) != "raw" {
		// Flags after the verb would land here unread.
		fail(usageError(fmt.Sprintf("unexpected %q after verb %s: flags go first", flag.Args()[1:], flag.Arg(0))))
	}

	r := Report{Libcni: libcniVersion()}
	list, err := libcni.LoadConfList(*confDir, *network)
	if err != nil {
		r.Error = &Error{Msg: "load conflist: " + err.Error()}
		emit(r)
		return
	}
	r.ListVersion = list.CNIVersion
	c := &client{
		cni:  libcni.NewCNIConfigWithCacheDir([]string{*binDir}, *cacheDir, nil),
		list: list,
		rt: &libcni.RuntimeConf{ContainerID: *id, NetNS: *netns, IfName: *ifname,
			Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAME", *id}}},
		valid: *valid,
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := verb(ctx, c, flag.Args()[1:], &r); err != nil {
		var u usageError
		if errors.As(err, &u) {
			fail(u)
		}
		r.Error = &Error{Msg: err.Error()}
		var e *types.Error
		if errors.As(err, &e) {
			r.Error = &Error{Code: e.Code, Msg: e.Msg, Details: e.Details}
		}
	}
	emit(r)
}

func emit(r Report) {
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "cniclient:", err)
	os.Exit(2)
}

// libcniVersion reads the linked libcni's version from the build info, so
// the caller can check the build is the one it asked for.
func libcniVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, m := range bi.Deps {
		if m.Path == "github.com/containernetworking/cni" {
			if m.Replace != nil {
				return m.Replace.Version
			}
			return m.Version
		}
	}
	return "not linked"
}
