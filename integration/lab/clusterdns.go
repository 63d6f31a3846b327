package lab

// The kubelet lab's cluster DNS. The upstream Services specs reach a Service
// by its name before its ClusterIP (e2e framework jig.go,
// checkClusterIPServiceReachability), so a cluster without DNS fails them
// without ever testing the pod network. CoreDNS is not among the Go modules
// available here; this answers the part of the Kubernetes DNS specification
// those specs use: <svc>.<ns>.svc.<domain> (ClusterIP, the ready endpoints of
// a headless Service, the CNAME of an ExternalName Service). Everything else
// is NXDOMAIN: the lab has no upstream resolver.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"golang.org/x/net/dns/dnsmessage"
)

// ClusterDNSPort is where the lab's cluster DNS listens, on UnderlayGateway
// (pods reach it masqueraded through their node, as any off-cluster address).
const ClusterDNSPort = 53

// clusterDNSTTL is short: the e2e specs change Services and endpoints and
// expect names to follow within seconds.
const clusterDNSTTL = 5

// ClusterDNSConfig configures ClusterDNS.
type ClusterDNSConfig struct {
	Client kubernetes.Interface
	Listen string // host:port, UDP and TCP
	Domain string // the cluster domain, e.g. cluster.local
	Log    *slog.Logger
}

// ClusterDNS serves the cluster's Service names.
type ClusterDNS struct {
	cfg    ClusterDNSConfig
	lookup serviceLookup
}

// serviceLookup returns the Service ns/name and the addresses of its ready
// (or, with publishNotReadyAddresses, all) endpoints; a nil Service when it
// does not exist.
type serviceLookup func(ns, name string) (*v1.Service, []netip.Addr, error)

// NewClusterDNS returns a ClusterDNS; Run serves it.
func NewClusterDNS(cfg ClusterDNSConfig) *ClusterDNS {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &ClusterDNS{cfg: cfg}
}

// Run serves until ctx is done.
func (d *ClusterDNS) Run(ctx context.Context) error {
	f := informers.NewSharedInformerFactory(d.cfg.Client, 0)
	svcs := f.Core().V1().Services().Lister()
	slices := f.Discovery().V1().EndpointSlices().Lister()
	f.Start(ctx.Done())
	defer f.Shutdown()
	for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("cluster dns: sync %v informer: %w", typ, ctx.Err())
		}
	}
	d.lookup = func(ns, name string) (*v1.Service, []netip.Addr, error) {
		svc, err := svcs.Services(ns).Get(name)
		if apierrors.IsNotFound(err) {
			return nil, nil, nil
		}
		if err != nil {
			return nil, nil, err
		}
		sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name})
		list, err := slices.EndpointSlices(ns).List(sel)
		if err != nil {
			return nil, nil, err
		}
		return svc, endpointAddrs(list, svc.Spec.PublishNotReadyAddresses), nil
	}
	pc, err := net.ListenPacket("udp", d.cfg.Listen)
	if err != nil {
		return fmt.Errorf("cluster dns: %w", err)
	}
	ln, err := net.Listen("tcp", d.cfg.Listen)
	if err != nil {
		pc.Close()
		return fmt.Errorf("cluster dns: %w", err)
	}
	go func() {
		<-ctx.Done()
		pc.Close()
		ln.Close()
	}()
	d.cfg.Log.Info("cluster dns serving", "listen", d.cfg.Listen, "domain", d.cfg.Domain)
	go d.serveTCP(ln)
	buf := make([]byte, 1500)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("cluster dns: read: %w", err)
		}
		if resp := d.answer(buf[:n], 512); resp != nil {
			_, _ = pc.WriteTo(resp, addr)
		}
	}
}

func (d *ClusterDNS) serveTCP(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			for {
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				var l [2]byte
				if _, err := io.ReadFull(c, l[:]); err != nil {
					return
				}
				msg := make([]byte, binary.BigEndian.Uint16(l[:]))
				if _, err := io.ReadFull(c, msg); err != nil {
					return
				}
				resp := d.answer(msg, 65535)
				if resp == nil {
					return
				}
				out := binary.BigEndian.AppendUint16(nil, uint16(len(resp)))
				if _, err := c.Write(append(out, resp...)); err != nil {
					return
				}
			}
		}()
	}
}

// endpointAddrs are the endpoint addresses of a Service's slices.
func endpointAddrs(slices []*discoveryv1.EndpointSlice, notReadyToo bool) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, s := range slices {
		for _, ep := range s.Endpoints {
			if !notReadyToo && ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, a := range ep.Addresses {
				ip, err := netip.ParseAddr(a)
				if err == nil && !seen[ip] {
					seen[ip] = true
					out = append(out, ip)
				}
			}
		}
	}
	return out
}

// answer builds the response to one query message (nil: not a query we can
// parse; dropped, as a resolver does with garbage). limit is the transport's
// message size; a UDP answer that does not fit is truncated (TC) so the
// client retries over TCP.
func (d *ClusterDNS) answer(msg []byte, limit int) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil || h.Response {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	rh := dnsmessage.Header{ID: h.ID, Response: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	answers, rcode, err := d.resolve(q.Name.String(), q.Type, 0)
	switch {
	case err != nil:
		d.cfg.Log.Warn("cluster dns lookup", "name", q.Name.String(), "err", err)
		rh.RCode = dnsmessage.RCodeServerFailure
	default:
		rh.RCode = rcode
		rh.Authoritative = strings.HasSuffix(strings.ToLower(q.Name.String()), "."+d.cfg.Domain+".")
	}
	resp, err := build(rh, q, answers)
	if err == nil && len(resp) > limit {
		rh.Truncated = true
		resp, err = build(rh, q, nil)
	}
	if err != nil {
		return nil
	}
	return resp
}

func build(h dnsmessage.Header, q dnsmessage.Question, answers []dnsmessage.Resource) ([]byte, error) {
	b := dnsmessage.NewBuilder(nil, h)
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	for _, a := range answers {
		var err error
		switch body := a.Body.(type) {
		case *dnsmessage.AResource:
			err = b.AResource(a.Header, *body)
		case *dnsmessage.AAAAResource:
			err = b.AAAAResource(a.Header, *body)
		case *dnsmessage.CNAMEResource:
			err = b.CNAMEResource(a.Header, *body)
		}
		if err != nil {
			return nil, err
		}
	}
	return b.Finish()
}

// errNotService: the name is in the cluster domain but not a Service name.
var errNotService = errors.New("not a service name")

// resolve answers name (absolute, with the trailing dot) for type t. depth
// bounds CNAME chains between ExternalName Services.
func (d *ClusterDNS) resolve(name string, t dnsmessage.Type, depth int) ([]dnsmessage.Resource, dnsmessage.RCode, error) {
	svc, addrs, err := d.service(name)
	if errors.Is(err, errNotService) || (err == nil && svc == nil) {
		return nil, dnsmessage.RCodeNameError, nil
	}
	if err != nil {
		return nil, 0, err
	}
	qname, err := dnsmessage.NewName(name)
	if err != nil {
		return nil, dnsmessage.RCodeNameError, nil
	}
	hdr := func(typ dnsmessage.Type) dnsmessage.ResourceHeader {
		return dnsmessage.ResourceHeader{Name: qname, Type: typ, Class: dnsmessage.ClassINET, TTL: clusterDNSTTL}
	}
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		target := strings.TrimSuffix(svc.Spec.ExternalName, ".") + "."
		tname, err := dnsmessage.NewName(target)
		if err != nil {
			return nil, dnsmessage.RCodeServerFailure, nil
		}
		out := []dnsmessage.Resource{{Header: hdr(dnsmessage.TypeCNAME), Body: &dnsmessage.CNAMEResource{CNAME: tname}}}
		if t != dnsmessage.TypeCNAME && depth < 8 {
			// Follow a target inside the cluster domain; outside it the
			// client's own lookup of the target gets NXDOMAIN.
			more, rcode, err := d.resolve(target, t, depth+1)
			if err == nil && rcode == dnsmessage.RCodeSuccess {
				out = append(out, more...)
			}
		}
		return out, dnsmessage.RCodeSuccess, nil
	}
	var ips []netip.Addr
	if svc.Spec.ClusterIP == v1.ClusterIPNone {
		ips = addrs
	} else {
		for _, s := range svc.Spec.ClusterIPs {
			if ip, err := netip.ParseAddr(s); err == nil {
				ips = append(ips, ip)
			}
		}
	}
	var out []dnsmessage.Resource
	for _, ip := range ips {
		switch {
		case t == dnsmessage.TypeA && ip.Is4():
			out = append(out, dnsmessage.Resource{Header: hdr(dnsmessage.TypeA), Body: &dnsmessage.AResource{A: ip.As4()}})
		case t == dnsmessage.TypeAAAA && ip.Is6():
			out = append(out, dnsmessage.Resource{Header: hdr(dnsmessage.TypeAAAA), Body: &dnsmessage.AAAAResource{AAAA: ip.As16()}})
		}
	}
	// An existing name without records of type t: NOERROR, no answers.
	return out, dnsmessage.RCodeSuccess, nil
}

// service looks up <svc>.<ns>.svc.<domain>.
func (d *ClusterDNS) service(name string) (*v1.Service, []netip.Addr, error) {
	n := strings.ToLower(strings.TrimSuffix(name, "."))
	rest, ok := strings.CutSuffix(n, ".svc."+d.cfg.Domain)
	if !ok {
		return nil, nil, errNotService
	}
	svc, ns, ok := strings.Cut(rest, ".")
	if !ok || svc == "" || ns == "" || strings.Contains(ns, ".") {
		return nil, nil, errNotService
	}
	return d.lookup(ns, svc)
}
