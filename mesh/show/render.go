package show

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"sigs.k8s.io/yaml"
)

// Text writes the report in the layout of `wg show`, with each peer's node
// name and health, every problem on its own line, and the excluded nodes
// at the end.
func Text(w io.Writer, r Report) error {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }

	line("interface: %s", r.Interface)
	if r.Node != "" {
		line("  node: %s", r.Node)
	}
	if r.PublicKey != "" {
		line("  public key: %s", r.PublicKey)
	}
	if r.privateKey != (wgtypes.Key{}) {
		line("  private key: (hidden)")
	}
	if r.ListenPort != 0 {
		line("  listening port: %d", r.ListenPort)
	}
	if r.FirewallMark != 0 {
		line("  fwmark: 0x%x", r.FirewallMark)
	}
	if r.Agent != nil {
		line("  desired peers from: %s", r.Source)
		outcome := "succeeded"
		if r.Agent.LastError != "" {
			outcome = "failed: " + r.Agent.LastError
		}
		synced := "node cache synced"
		if !r.Agent.Synced {
			synced = "node cache NOT synced"
		}
		line("  last reconcile: %s, %s, %s", Ago(r.Agent.LastReconcile, r.Time), outcome, synced)
	}
	for _, warn := range r.Warnings {
		line("  warning: %s", warn)
	}
	// The relayed pairs at a glance (each peer says it again below).
	var relayed []string
	for _, p := range r.Peers {
		if p.RelayedVia != "" {
			relayed = append(relayed, p.Node+" via "+p.RelayedVia)
		}
	}
	if len(relayed) > 0 {
		line("  relayed: %s", strings.Join(relayed, ", "))
	}

	for _, p := range r.Peers {
		line("")
		line("peer: %s", p.PublicKey)
		if p.Node != "" {
			line("  node: %s", p.Node)
		}
		line("  health: %s", p.Health)
		if p.RelayedVia != "" {
			line("  relayed via: %s", p.RelayedVia)
		}
		for _, pr := range p.Problems {
			line("  problem: %s: %s", pr.Health, pr.Detail)
		}
		for _, d := range p.Degraded {
			line("  degraded: %s: %s", d.Reason, d.Message)
		}
		if _, ok := r.presharedKey[p.PublicKey]; ok {
			line("  preshared key: (hidden)")
		}
		if !p.OnDevice {
			if p.DesiredEndpoint != "" {
				line("  desired endpoint: %s", p.DesiredEndpoint)
			}
			line("  desired allowed ips: %s", listOrNone(p.DesiredAllowedIPs))
			continue
		}
		if p.Endpoint != "" {
			line("  endpoint: %s", p.Endpoint)
		}
		line("  allowed ips: %s", listOrNone(p.AllowedIPs))
		if p.LatestHandshake != nil {
			line("  latest handshake: %s", Ago(*p.LatestHandshake, r.Time))
		}
		if p.RxBytes != 0 || p.TxBytes != 0 {
			line("  transfer: %s", Transfer(p.RxBytes, p.TxBytes))
		}
		if p.PersistentKeepaliveSeconds != 0 {
			line("  persistent keepalive: every %s", PrettyDuration(time.Duration(p.PersistentKeepaliveSeconds)*time.Second))
		}
	}
	for _, e := range r.Excluded {
		line("")
		line("excluded node: %s", e.Node)
		line("  reason: %s", e.Reason)
		if e.Message != "" {
			line("  message: %s", e.Message)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// JSON writes the report as indented JSON (the -o json schema).
func JSON(w io.Writer, r Report) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	_, err = w.Write(append(data, '\n'))
	return err
}

// YAML writes the report as YAML with the same field names as JSON.
func YAML(w io.Writer, r Report) error {
	data, err := yaml.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode yaml: %w", err)
	}
	_, err = w.Write(data)
	return err
}

// ConfOptions tunes Conf.
type ConfOptions struct {
	// ShowPrivate prints the private and preshared keys instead of
	// redacting them.
	ShowPrivate bool
}

// Conf writes the live device as a wg-quick style INI in the order of
// `wg showconf`, with each peer's node name as a comment. Keys are redacted
// (as comments, so the output still parses) unless opt.ShowPrivate. Missing
// peers are not on the device and so are not shown.
func Conf(w io.Writer, r Report, opt ConfOptions) error {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	if r.Node != "" {
		line("# %s on node %s", r.Interface, r.Node)
	} else {
		line("# %s", r.Interface)
	}
	line("[Interface]")
	if r.ListenPort != 0 {
		line("ListenPort = %d", r.ListenPort)
	}
	if r.FirewallMark != 0 {
		line("FwMark = 0x%x", r.FirewallMark)
	}
	if r.privateKey != (wgtypes.Key{}) {
		if opt.ShowPrivate {
			line("PrivateKey = %s", r.privateKey)
		} else {
			line("# PrivateKey = (redacted; use --show-private)")
		}
	}
	for _, p := range r.Peers {
		if !p.OnDevice {
			continue
		}
		line("")
		line("[Peer]")
		switch {
		case p.Node != "":
			line("# Node = %s (%s)", p.Node, p.Health)
		case p.Health == Unexpected:
			line("# Node = (none: unexpected peer)")
		}
		line("PublicKey = %s", p.PublicKey)
		if psk, ok := r.presharedKey[p.PublicKey]; ok {
			if opt.ShowPrivate {
				line("PresharedKey = %s", psk)
			} else {
				line("# PresharedKey = (redacted; use --show-private)")
			}
		}
		if len(p.AllowedIPs) > 0 {
			line("AllowedIPs = %s", strings.Join(p.AllowedIPs, ", "))
		}
		if p.Endpoint != "" {
			line("Endpoint = %s", p.Endpoint)
		}
		if p.PersistentKeepaliveSeconds != 0 {
			line("PersistentKeepalive = %d", p.PersistentKeepaliveSeconds)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// healthColor maps health to a Graphviz colour.
func healthColor(h Health) string {
	switch h {
	case OK:
		return "darkgreen"
	case Unknown:
		return "gray40"
	case NoHandshake, StaleEndpoint:
		return "orange3"
	}
	return "red"
}

// DOT writes the mesh as seen from this node as an undirected Graphviz
// graph: this node in the middle, an edge per peer labelled with its
// handshake age (and health when not ok), missing peers dashed, unexpected
// peers as their short key, excluded nodes dotted without an edge.
func DOT(w io.Writer, r Report) error {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	self := r.Node
	if self == "" {
		self = "this node"
	}
	line("graph wgmesh {")
	line("  label=%s;", dotQuote(fmt.Sprintf("wgmesh: %s on %s at %s", r.Interface, self, r.Time.Format(time.RFC3339))))
	line("  labelloc=t;")
	line("  node [shape=box, fontname=\"sans-serif\"];")
	line("  edge [fontname=\"sans-serif\", fontsize=10];")
	line("  %s [style=bold, label=%s];", dotQuote("self"), dotQuote(self+"\n"+shortKey(r.PublicKey)))
	for i, p := range r.Peers {
		id := fmt.Sprintf("peer%d", i)
		name := p.Node
		if name == "" {
			name = "(unexpected)"
		}
		color := healthColor(p.Health)
		line("  %s [label=%s, color=%s];", dotQuote(id), dotQuote(name+"\n"+shortKey(p.PublicKey)), color)
		age := "no handshake"
		if p.LatestHandshake != nil {
			age = Ago(*p.LatestHandshake, r.Time)
		}
		label := age
		if p.Health != OK {
			label = string(p.Health) + "\n" + age
		}
		style := "solid"
		if !p.OnDevice {
			style = "dashed"
		}
		line("  %s -- %s [label=%s, color=%s, style=%s];", dotQuote("self"), dotQuote(id), dotQuote(label), color, style)
	}
	for i, e := range r.Excluded {
		line("  %s [label=%s, style=dotted, color=gray40];", dotQuote(fmt.Sprintf("excluded%d", i)),
			dotQuote(e.Node+"\nexcluded: "+e.Reason))
	}
	line("}")
	_, err := io.WriteString(w, b.String())
	return err
}

func shortKey(k string) string {
	if len(k) > 8 {
		return k[:8] + "…"
	}
	return k
}

// dotQuote makes a DOT double-quoted string; newlines become \n.
func dotQuote(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `"`, `\"`)
	s = strings.ReplaceAll(s, "\n", `\n`)
	return `"` + s + `"`
}

// Check writes one line per problem (and per input warning) and reports
// whether everything is healthy: every desired peer ok and no unexpected
// peer on the device.
func Check(w io.Writer, r Report) (bool, error) {
	var b strings.Builder
	for _, warn := range r.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", warn)
	}
	for _, p := range r.Peers {
		name := p.Node
		if name == "" {
			name = "(no node)"
		}
		if p.Health == Unknown {
			fmt.Fprintf(&b, "%s %s: unknown: no desired state to compare with\n", name, p.PublicKey)
		}
		for _, pr := range p.Problems {
			fmt.Fprintf(&b, "%s %s: %s: %s\n", name, p.PublicKey, pr.Health, pr.Detail)
		}
	}
	if r.Healthy {
		fmt.Fprintf(&b, "ok: %d peers healthy\n", len(r.Peers))
	}
	_, err := io.WriteString(w, b.String())
	return r.Healthy, err
}
