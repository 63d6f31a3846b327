package soak

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/wgmesh/wgmesh/integration/lab"
)

// inject runs one fault of kind, waits for convergence and records it.
// A fault that cannot apply to the lab's current shape (removing a node
// from two, adding one beyond base+1) turns into its opposite.
func (s *soak) inject(kind string) {
	switch {
	case kind == "node-remove" && len(s.nodes()) <= 2:
		kind = "node-add"
	case kind == "node-add" && len(s.nodes()) >= s.base+1:
		kind = "node-remove"
	}
	f := &faultRecord{Kind: kind, Start: time.Now()}
	var err error
	var removedKey string
	switch kind {
	case "agent-kill":
		err = s.agentKill(f)
	case "apiserver-restart":
		err = s.apiserverRestart(f)
	case "node-add":
		err = s.nodeAdd(f)
	case "node-remove":
		removedKey, err = s.nodeRemove(f)
	case "key-rotation":
		err = s.keyRotation(f)
	case "link-flap":
		err = s.linkFlap(f)
	case "loss-jitter":
		err = s.lossJitter(f)
	case "mtu":
		err = s.mtuChange(f)
	case "pod-churn":
		err = s.podChurn(f)
	default:
		err = fmt.Errorf("unknown fault %q", kind)
	}
	s.faults = append(s.faults, f)
	if f.Repaired.IsZero() {
		f.Repaired = time.Now()
	}
	if err != nil {
		s.t.Errorf("fault %s on %s: %v", kind, f.Target, err)
		return
	}
	s.syncPods()
	d, missing := s.converge(f.Repaired, *soakBound)
	if kind == "node-remove" {
		// Converged also means every remaining node dropped the peer.
		left, dd := s.waitPeerGone(removedKey, f.Repaired, *soakBound)
		d = max(d, dd)
		missing = append(missing, left...)
	}
	f.Converged = d
	f.OK = len(missing) == 0
	if !f.OK {
		s.t.Errorf("%s on %s (%s): not converged within %s: %v", kind, f.Target, f.Note, *soakBound, missing)
		return
	}
	s.t.Logf("%s %s on %s (%s): converged %s after the repair", f.Start.Format("15:04:05"), kind, f.Target, f.Note, d.Round(time.Millisecond))
}

// pick returns a random node, the witness (whose agent is measured over
// the whole soak, so never restarted or removed) only if allowWitness.
func (s *soak) pick(allowWitness bool) string {
	var c []string
	for _, n := range s.nodes() {
		if allowWitness || n != s.witness {
			c = append(c, n)
		}
	}
	return c[s.rng.IntN(len(c))]
}

// pause keeps the traffic going for a random time in [lo, hi].
func (s *soak) pause(lo, hi time.Duration) time.Duration {
	d := lo + time.Duration(s.rng.Int64N(int64(hi-lo)+1))
	s.idle(d)
	return d
}

func (s *soak) agentKill(f *faultRecord) error {
	f.Target = s.pick(false)
	if err := s.l.KillAgent(f.Target); err != nil {
		return err
	}
	if s.l.State().Kubelet {
		// The kubelet restarts the container after its crash-loop
		// back-off (10 s, doubling while crashes come within 10 min of
		// each other); convergence counts from the restart, the note
		// says how long the node was without its agent.
		killed := time.Now()
		done := make(chan error, 1)
		go func() { done <- s.l.StartAgent(f.Target) }()
		for {
			select {
			case err := <-done:
				if err != nil {
					return err
				}
				f.Note = fmt.Sprintf("SIGKILL, restarted by the kubelet %s later", time.Since(killed).Round(time.Millisecond))
				return nil
			case <-time.After(250 * time.Millisecond):
				s.service()
			}
		}
	}
	down := s.pause(500*time.Millisecond, 2*time.Second)
	if err := s.l.StartAgent(f.Target); err != nil {
		return err
	}
	f.Note = fmt.Sprintf("SIGKILL, started again %s later", down.Round(time.Millisecond))
	return nil
}

func (s *soak) apiserverRestart(f *faultRecord) error {
	f.Target = "apiserver"
	if err := s.l.StopAPIServer(); err != nil {
		return err
	}
	down := s.pause(time.Second, 5*time.Second)
	t0 := time.Now()
	if err := s.l.StartAPIServer(s.ctx); err != nil {
		return err
	}
	f.Note = fmt.Sprintf("down %s, ready %s after its start", down.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	return nil
}

func (s *soak) nodeAdd(f *faultRecord) error {
	// A node joins with the underlay's current MTU, as its link would
	// have on that network.
	n, err := s.l.AddNode(s.ctx, lab.NodeOptions{Pods: 1, MTU: s.mtu})
	if n != nil {
		f.Target = n.Name
	}
	if err != nil {
		return err
	}
	f.Note = fmt.Sprintf("AddNode (agent ready, pod attached) took %s", time.Since(f.Start).Round(time.Millisecond))
	return nil
}

func (s *soak) nodeRemove(f *faultRecord) (string, error) {
	f.Target = s.pick(false)
	out, err := s.l.Exec(s.ctx, f.Target, "wg", "show", "wgmesh0", "public-key")
	if err != nil {
		return "", fmt.Errorf("public key of %s: %v: %s", f.Target, err, out)
	}
	key := strings.TrimSpace(string(out))
	// Its pods' traffic ends with them: stopped first and counted apart.
	s.dropPods(func(p *pod) bool { return p.Node == f.Target })
	if err := s.l.RemoveNode(s.ctx, f.Target); err != nil {
		return key, err
	}
	f.Note = "Node deleted, namespaces gone"
	return key, nil
}

// waitPeerGone waits until no node has the removed node's key as a peer.
func (s *soak) waitPeerGone(key string, since time.Time, bound time.Duration) ([]string, time.Duration) {
	for {
		var left []string
		for _, n := range s.nodes() {
			out, err := s.l.Exec(s.ctx, n, "wg", "show", "wgmesh0", "peers")
			if err != nil || strings.Contains(string(out), key) {
				left = append(left, n+" still has the removed node's peer")
			}
		}
		if len(left) == 0 || time.Since(since) > bound || s.ctx.Err() != nil {
			return left, time.Since(since)
		}
		s.idle(250 * time.Millisecond)
	}
}

func (s *soak) keyRotation(f *faultRecord) error {
	f.Target = s.pick(true)
	ul, _ := s.l.Underlay()
	// The operator's way: wgmeshctl with the admin kubeconfig, waiting for
	// the agent's answer.
	argv := []string{"ip", "netns", "exec", ul, filepath.Join(binDir, "wgmeshctl"), "rotate-key",
		"--kubeconfig", s.l.AdminKubeconfig(), "--node-name", f.Target, "--wait", "60s"}
	done := make(chan error, 1)
	var out []byte
	go func() {
		var err error
		out, err = exec.CommandContext(s.ctx, argv[0], argv[1:]...).CombinedOutput()
		done <- err
	}()
	for {
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("wgmeshctl rotate-key: %v: %s", err, out)
			}
			f.Note = fmt.Sprintf("wgmeshctl rotate-key answered in %s", time.Since(f.Start).Round(time.Millisecond))
			return nil
		case <-time.After(250 * time.Millisecond):
			s.service()
		}
	}
}

func (s *soak) linkFlap(f *faultRecord) error {
	f.Target = s.pick(true)
	ul, _ := s.l.Underlay()
	link := s.l.State().Nodes[f.Target].Link
	if out, err := exec.Command("ip", "-n", ul, "link", "set", link, "down").CombinedOutput(); err != nil {
		return fmt.Errorf("link down: %v: %s", err, out)
	}
	down := s.pause(time.Second, 3*time.Second)
	if out, err := exec.Command("ip", "-n", ul, "link", "set", link, "up").CombinedOutput(); err != nil {
		return fmt.Errorf("link up: %v: %s", err, out)
	}
	f.Note = fmt.Sprintf("underlay port down %s", down.Round(time.Millisecond))
	return nil
}

// mtuChange switches the whole underlay (every node's eth0 and its bridge
// port) between 1500 and 1400. The agents keep the MTU they detected at
// start; WireGuard's packets that no longer fit are fragmented by the
// sending node's kernel.
func (s *soak) mtuChange(f *faultRecord) error {
	to := 1400
	if s.mtu == 1400 {
		to = 1500
	}
	f.Target = "underlay"
	ul, _ := s.l.Underlay()
	m := fmt.Sprint(to)
	for _, name := range s.nodes() {
		n := s.l.State().Nodes[name]
		for _, argv := range [][]string{
			{"ip", "-n", ul, "link", "set", n.Link, "mtu", m},
			{"ip", "-n", n.Netns, "link", "set", "eth0", "mtu", m},
		} {
			if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
				return fmt.Errorf("%v: %v: %s", argv, err, out)
			}
		}
	}
	f.Note = fmt.Sprintf("underlay MTU %d → %d", s.mtu, to)
	s.mtu = to
	return nil
}

// podChurn replaces a pod: CNI DEL of one, CNI ADD of a new one on the
// same node; the node's address store must then hold exactly its pods.
func (s *soak) podChurn(f *faultRecord) error {
	node := s.pick(true)
	n := s.l.State().Nodes[node]
	names := n.PodNames()
	if len(names) == 0 {
		return fmt.Errorf("node %s has no pod", node)
	}
	old := names[s.rng.IntN(len(names))]
	f.Target = node + "/" + old
	s.dropPods(func(p *pod) bool { return p.Node == node && p.Name == old })
	if err := s.l.RemovePod(s.ctx, node, old); err != nil {
		return err
	}
	p, err := s.l.AddPod(s.ctx, node)
	if err != nil {
		return err
	}
	f.Note = fmt.Sprintf("replaced by %s (%s)", p.Name, p.IP)
	if leaks := s.ipamMismatch(node); len(leaks) > 0 {
		return fmt.Errorf("address store of %s after the churn: %v", node, leaks)
	}
	return nil
}
