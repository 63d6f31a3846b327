package lab

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

func TestPKI(t *testing.T) {
	p := pki{dir: t.TempDir()}
	if err := p.generate([]net.IP{net.ParseIP(UnderlayGateway), net.ParseIP("127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(p.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool, err := certPool(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	serving := loadCert(t, p.path("apiserver.crt"))
	for _, name := range []string{UnderlayGateway, "127.0.0.1", "kubernetes.default.svc"} {
		if _, err := serving.Verify(x509.VerifyOptions{Roots: pool, DNSName: name}); err != nil {
			t.Errorf("serving cert does not verify for %s: %v", name, err)
		}
	}
	if _, err := serving.Verify(x509.VerifyOptions{Roots: pool, DNSName: "198.51.100.2"}); err == nil {
		t.Error("serving cert verifies for an address it was not issued for")
	}
	admin := loadCert(t, p.path("admin.crt"))
	if _, err := admin.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("admin cert is no client cert of the CA: %v", err)
	}
	if !cmp.Equal(admin.Subject.Organization, []string{"system:masters"}) {
		t.Errorf("admin cert organization %v, want system:masters", admin.Subject.Organization)
	}
	for _, name := range []string{"apiserver", "admin"} {
		if _, err := tls.LoadX509KeyPair(p.path(name+".crt"), p.path(name+".key")); err != nil {
			t.Errorf("%s key pair: %v", name, err)
		}
		assertMode(t, p.path(name+".key"), 0o600)
	}
	assertMode(t, p.path("sa.key"), 0o600)
	key := parsePEM(t, p.path("sa.key"))
	pub := parsePEM(t, p.path("sa.pub"))
	priv, err := x509.ParsePKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.ParsePKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !priv.(*rsa.PrivateKey).PublicKey.Equal(pk) {
		t.Error("service-account public key does not match the signing key")
	}
	if _, ok := loadKey(t, p.path("admin.key")).(*ecdsa.PrivateKey); !ok {
		t.Error("admin key is not ECDSA")
	}
}

func loadCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(parsePEM(t, path))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func loadKey(t *testing.T, path string) any {
	t.Helper()
	k, err := x509.ParsePKCS8PrivateKey(parsePEM(t, path))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func parsePEM(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	return b.Bytes
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != want {
		t.Errorf("%s mode %v, want %v", path, fi.Mode().Perm(), want)
	}
}

func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if _, err := loadState(dir); err == nil {
		t.Fatal("loading a missing state succeeded")
	}
	st := &State{Name: "x", NetnsPrefix: "wgl-x-", Underlay: "wgl-x-ul", Nodes: map[string]*Node{
		"b": {Name: "b", Index: 2, Pods: map[string]*Pod{"p10": {Name: "p10"}, "p2": {Name: "p2"}, "p1": {Name: "p1"}}},
		"a": {Name: "a", Index: 1},
		"z": {Name: "z", Index: 10},
	}, NextIndex: 11}
	if err := saveState(dir, st); err != nil {
		t.Fatal(err)
	}
	got, err := loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Nodes["a"].Pods == nil {
		t.Error("loaded node has nil pod map")
	}
	if d := cmp.Diff([]string{"a", "b", "z"}, got.NodeNames()); d != "" {
		t.Errorf("node order (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"p1", "p2", "p10"}, got.Nodes["b"].PodNames()); d != "" {
		t.Errorf("pod order (-want +got):\n%s", d)
	}
	if err := os.WriteFile(statePath(dir), []byte("{trunc"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadState(dir); err == nil {
		t.Error("a corrupt state file loaded without error")
	}
}

func TestRBACObjects(t *testing.T) {
	objs, err := RBACObjects()
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, o := range objs {
		switch o.(type) {
		case *corev1.Namespace:
			kinds["Namespace"]++
		case *corev1.ServiceAccount:
			kinds["ServiceAccount"]++
		case *rbacv1.ClusterRole:
			kinds["ClusterRole"]++
		case *rbacv1.ClusterRoleBinding:
			kinds["ClusterRoleBinding"]++
		case *admissionregistrationv1.ValidatingAdmissionPolicy:
			kinds["ValidatingAdmissionPolicy"]++
		case *admissionregistrationv1.ValidatingAdmissionPolicyBinding:
			kinds["ValidatingAdmissionPolicyBinding"]++
		}
	}
	want := map[string]int{"Namespace": 1, "ServiceAccount": 1, "ClusterRole": 1, "ClusterRoleBinding": 1,
		"ValidatingAdmissionPolicy": 1, "ValidatingAdmissionPolicyBinding": 1}
	if d := cmp.Diff(want, kinds); d != "" {
		t.Errorf("objects applied from deploy/base (-want +got):\n%s", d)
	}
	if _, ok := objs[0].(*corev1.Namespace); !ok {
		t.Errorf("first object is %T, want the Namespace", objs[0])
	}
	cr, err := ShippedClusterRole()
	if err != nil {
		t.Fatal(err)
	}
	if len(cr.Rules) == 0 {
		t.Error("shipped ClusterRole has no rules")
	}
}

func TestNodePath(t *testing.T) {
	n := &Node{Dir: "/s/nodes/n1"}
	for in, want := range map[string]string{
		"/etc/cni/net.d/10-wgmesh.conflist": "/s/nodes/n1/cni-conf/10-wgmesh.conflist",
		"/var/run/wireguard/wgmesh0.sock":   "/s/nodes/n1/run-wireguard/wgmesh0.sock",
		"/opt/cni/bin":                      "/s/nodes/n1/cni-bin",
		"/etc/cni":                          "",
		"/var/lib/cnix":                     "",
	} {
		if got := n.NodePath(in); got != want {
			t.Errorf("NodePath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestProcLifecycle(t *testing.T) {
	log := filepath.Join(t.TempDir(), "sleep.log")
	p, err := startDetached([]string{"sleep", "60"}, log, os.Environ())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(p.PID, syscall.SIGKILL) })
	if !p.Alive() {
		t.Fatal("started process is not alive")
	}
	// A record whose start time does not match (pid reused) is neither
	// alive nor signalled.
	stale := Proc{PID: p.PID, StartTime: p.StartTime + 1}
	if stale.Alive() {
		t.Error("a pid with a different start time counts as alive")
	}
	if err := stale.stop(syscall.SIGKILL, time.Second); err != nil {
		t.Fatal(err)
	}
	if !p.Alive() {
		t.Fatal("stopping a stale record killed the live process")
	}
	if err := p.stop(syscall.SIGTERM, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if p.Alive() {
		t.Error("process alive after stop")
	}
}

// TestDaemonsDoNotInheritDescriptors: a descriptor the lab inherited without
// close-on-exec (as `flock LOCK cmd` passes its lock) must not reach the
// daemons, which outlive the lab command and would hold the lock with them.
func TestDaemonsDoNotInheritDescriptors(t *testing.T) {
	dir := t.TempDir()
	fd, err := syscall.Open(filepath.Join(dir, "lock"), syscall.O_CREAT|syscall.O_RDWR, 0o600) // no O_CLOEXEC, like flock(1)'s
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Close(fd) })
	log := filepath.Join(dir, "fds.log")
	p, err := startDetached([]string{"sh", "-c", "ls /proc/$$/fd"}, log, os.Environ())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.stop(syscall.SIGKILL, 5*time.Second) })
	var fds []string
	for deadline := time.Now().Add(10 * time.Second); p.Alive() && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if line != "" && !strings.HasPrefix(line, "====") {
			fds = append(fds, line)
		}
	}
	if len(fds) == 0 {
		t.Fatalf("the daemon listed no descriptors; log:\n%s", data)
	}
	for _, f := range fds {
		if f == strconv.Itoa(fd) {
			t.Errorf("daemon inherited descriptor %d; it has %v", fd, fds)
		}
	}
}
