package cni

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

const goodConf = `{"cniVersion":"1.1.0","name":"wgmesh","type":"wgmesh","bridge":"wgmesh-br0","mtu":1420,"podCIDRs":["10.244.1.0/24"],"dataDir":"/var/lib/cni/wgmesh"}`

var netipOpts = cmp.Options{cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}), cmpopts.EquateEmpty()}

func TestParseConfGood(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Conf
	}{
		{
			name: "agent's config",
			in:   goodConf,
			want: Conf{Name: "wgmesh", CNIVersion: "1.1.0", Bridge: "wgmesh-br0", MTU: 1420,
				PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, DataDir: "/var/lib/cni/wgmesh"},
		},
		{
			name: "defaults",
			in:   `{"cniVersion":"1.1.0","name":"n","type":"wgmesh","podCIDRs":["10.244.1.0/24"]}`,
			want: Conf{Name: "n", CNIVersion: "1.1.0", Bridge: DefaultBridge, MTU: DefaultMTU,
				PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, DataDir: DefaultDataDir},
		},
		{
			name: "dual stack, unknown fields ignored, dataDir cleaned",
			in: `{"cniVersion":"1.0.0","name":"n","type":"wgmesh","mtu":1380,"podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64"],
				"dataDir":"/var/lib//x/","capabilities":{"portMappings":true},"runtimeConfig":{"x":1},"future":"field"}`,
			want: Conf{Name: "n", CNIVersion: "1.0.0", Bridge: DefaultBridge, MTU: 1380,
				PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}, DataDir: "/var/lib/x"},
		},
		{
			name: "GC attachments",
			in:   `{"cniVersion":"1.1.0","name":"n","type":"wgmesh","podCIDRs":["10.244.1.0/24"],"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}`,
			want: Conf{Name: "n", CNIVersion: "1.1.0", Bridge: DefaultBridge, MTU: DefaultMTU,
				PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, DataDir: DefaultDataDir,
				ValidAttachments: []types.GCAttachment{{ContainerID: "a", IfName: "eth0"}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConf([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(&tt.want, got, netipOpts); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseConfPrevResult(t *testing.T) {
	in := `{"cniVersion":"1.1.0","name":"n","type":"wgmesh","podCIDRs":["10.244.1.0/24"],
		"prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/x"}],
		"ips":[{"address":"10.244.1.5/24","gateway":"10.244.1.1","interface":0}]}}`
	c, err := ParseConf([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if c.PrevResult == nil || len(c.PrevResult.IPs) != 1 || c.PrevResult.IPs[0].Address.String() != "10.244.1.5/24" {
		t.Fatalf("prevResult = %+v", c.PrevResult)
	}
	bad := `{"cniVersion":"1.1.0","name":"n","type":"wgmesh","podCIDRs":["10.244.1.0/24"],"prevResult":{"cniVersion":"1.1.0","ips":[{"address":"nope"}]}}`
	if _, err := ParseConf([]byte(bad)); errCode(err) != types.ErrInvalidNetworkConfig {
		t.Errorf("broken prevResult: %v", err)
	}
	// DEL and GC must not be stopped by it.
	if _, err := parseConf([]byte(bad), false); err != nil {
		t.Errorf("lenient parse: %v", err)
	}
}

func errCode(err error) uint {
	if e, ok := err.(*types.Error); ok {
		return e.Code
	}
	return 0
}

func TestParseConfBad(t *testing.T) {
	tests := []struct {
		name string
		in   string
		code uint
		msg  string // substring of the message
	}{
		{"empty", ``, 6, "not valid JSON"},
		{"garbage", `not json`, 6, "not valid JSON"},
		{"truncated", goodConf[:40], 6, "not valid JSON"},
		{"array", `[1,2]`, 7, "the config must be a JSON object, not a JSON array"},
		{"no name", `{"cniVersion":"1.1.0","type":"wgmesh","podCIDRs":["10.244.1.0/24"]}`, 7, "name is missing"},
		{"mtu string", `{"name":"n","mtu":"1420","podCIDRs":["10.244.1.0/24"]}`, 7, `field "mtu" must be a number, not a JSON string`},
		{"mtu float", `{"name":"n","mtu":1420.5,"podCIDRs":["10.244.1.0/24"]}`, 7, `field "mtu" must be a number`},
		{"mtu negative", `{"name":"n","mtu":-1,"podCIDRs":["10.244.1.0/24"]}`, 7, "mtu -1 is out of range"},
		{"mtu too small", `{"name":"n","mtu":60,"podCIDRs":["10.244.1.0/24"]}`, 7, "mtu 60 is out of range: it must be between 68 and 65535"},
		{"mtu too big", `{"name":"n","mtu":70000,"podCIDRs":["10.244.1.0/24"]}`, 7, "out of range"},
		{"mtu below IPv6 minimum", `{"name":"n","mtu":1200,"podCIDRs":["10.244.1.0/24","fd00::/64"]}`, 7, "between 1280 and 65535"},
		{"podCIDRs missing", `{"name":"n","mtu":1420}`, 7, "podCIDRs is empty"},
		{"podCIDRs empty", `{"name":"n","podCIDRs":[]}`, 7, "podCIDRs is empty"},
		{"podCIDRs not a list", `{"name":"n","podCIDRs":"10.244.1.0/24"}`, 7, `field "podCIDRs" must be a list`},
		{"podCIDRs number", `{"name":"n","podCIDRs":[24]}`, 7, `must be a string`},
		{"podCIDR not CIDR", `{"name":"n","podCIDRs":["10.244.1.0"]}`, 7, `podCIDRs[0] "10.244.1.0" is not a CIDR prefix`},
		{"podCIDR bad bits", `{"name":"n","podCIDRs":["10.244.1.0/33"]}`, 7, "is not a CIDR prefix"},
		{"podCIDR host bits", `{"name":"n","podCIDRs":["10.244.1.7/24"]}`, 7, "did you mean 10.244.1.0/24?"},
		{"podCIDR too small", `{"name":"n","podCIDRs":["10.244.1.0/31"]}`, 7, "too small"},
		{"podCIDRs overlap", `{"name":"n","podCIDRs":["10.244.0.0/16","10.244.1.0/24"]}`, 7, "overlaps"},
		{"bridge too long", `{"name":"n","bridge":"a-very-long-bridge-name","podCIDRs":["10.244.1.0/24"]}`, 7, "at most 15 bytes"},
		{"bridge slash", `{"name":"n","bridge":"br/0","podCIDRs":["10.244.1.0/24"]}`, 7, "cannot contain"},
		{"bridge number", `{"name":"n","bridge":7,"podCIDRs":["10.244.1.0/24"]}`, 7, `field "bridge" must be a string`},
		{"dataDir relative", `{"name":"n","dataDir":"var/lib","podCIDRs":["10.244.1.0/24"]}`, 7, "must be an absolute path"},
		{"attachments wrong", `{"name":"n","podCIDRs":["10.244.1.0/24"],"cni.dev/valid-attachments":{"a":1}}`, 7, "must be a list"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConf([]byte(tt.in))
			if err == nil {
				t.Fatal("accepted")
			}
			if errCode(err) != tt.code || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("got code %d %q, want code %d containing %q", errCode(err), err, tt.code, tt.msg)
			}
		})
	}
}

func TestParseConfLenient(t *testing.T) {
	// DEL and GC accept a config with broken podCIDRs or mtu...
	c, err := parseConf([]byte(`{"name":"n","mtu":5,"podCIDRs":["junk","10.244.1.7/24"],"dataDir":"/d"}`), false)
	if err != nil {
		t.Fatal(err)
	}
	if c.StoreDir() != "/d/n" || c.Bridge != DefaultBridge {
		t.Errorf("got %+v", c)
	}
	// ...but not one they could not act on.
	for _, in := range []string{`{`, `{"name":"n","dataDir":"rel"}`, `{"name":"n","bridge":"x/y"}`} {
		if _, err := parseConf([]byte(in), false); err == nil {
			t.Errorf("lenient parse accepted %s", in)
		}
	}
}

func TestGateways(t *testing.T) {
	c, err := ParseConf([]byte(`{"name":"n","podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64"]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.244.1.1/24"), netip.MustParsePrefix("fd00:10:244:1::1/64")}
	if diff := cmp.Diff(want, c.Gateways(), netipOpts); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("abc", "eth0")
	if len(a) != 15 || !IsHostVethName(a) {
		t.Errorf("%q is not a valid host veth name", a)
	}
	if a != HostVethName("abc", "eth0") {
		t.Error("not deterministic")
	}
	if a == HostVethName("abc", "eth1") || a == HostVethName("abd", "eth0") || HostVethName("ab", "ceth0") == HostVethName("abc", "eth0") {
		t.Error("collision between different attachments")
	}
	for _, n := range []string{"eth0", "vethabc", "veth0123456789ab", "wgmesh-br0"} {
		if IsHostVethName(n) {
			t.Errorf("IsHostVethName(%q) = true", n)
		}
	}
}
