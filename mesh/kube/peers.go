package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/wgmesh/wgmesh/mesh"
)

// PeerGVR is the external peers' resource (deploy/base/peer-crd.yaml).
var PeerGVR = schema.GroupVersionResource{Group: "wgmesh.io", Version: "v1alpha1", Resource: "peers"}

// peerWatch keeps a cache of the Peer objects. The CRD is optional: where
// it is not installed the cache counts as synced and empty (and is looked
// for again now and then), so a cluster without external peers never
// waits for them.
type peerWatch struct {
	dyn    dynamic.Interface
	disc   discovery.DiscoveryInterface
	log    *slog.Logger
	signal func()
	// recheck is how often a missing CRD is looked for again.
	recheck time.Duration

	// state: 0 not yet known, 1 CRD absent, 2 informer running.
	state    atomic.Int32
	mu       sync.Mutex
	informer cache.SharedIndexInformer
}

const (
	peersUnknown int32 = iota
	peersAbsent
	peersWatching
)

// run looks for the CRD and, once it exists, runs the informer until ctx
// ends.
func (w *peerWatch) run(ctx context.Context) {
	backoff := time.Second
	for {
		ok, err := w.crdInstalled()
		switch {
		case err != nil:
			// The apiserver is unreachable or refuses: neither synced
			// nor absent; the node informer has the same problem.
			w.log.Warn("looking for the Peer CRD failed; retrying", "err", err, "retry_in", backoff)
		case ok:
			w.watch(ctx)
			return
		default:
			if w.state.Swap(peersAbsent) != peersAbsent {
				w.log.Info("Peer CRD (peers.wgmesh.io) not installed: no external peers", "recheck", w.recheck)
				w.signal()
			}
			backoff = w.recheck
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if err != nil {
			backoff = min(backoff*2, w.recheck)
		}
	}
}

func (w *peerWatch) crdInstalled() (bool, error) {
	list, err := w.disc.ServerResourcesForGroupVersion(PeerGVR.GroupVersion().String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, r := range list.APIResources {
		if r.Name == PeerGVR.Resource {
			return true, nil
		}
	}
	return false, nil
}

func (w *peerWatch) watch(ctx context.Context) {
	f := dynamicinformer.NewDynamicSharedInformerFactory(w.dyn, 0)
	inf := f.ForResource(PeerGVR).Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.signal() },
		UpdateFunc: func(any, any) { w.signal() },
		DeleteFunc: func(any) { w.signal() },
	}); err != nil {
		w.log.Error("peer informer: add event handler", "err", err)
		return
	}
	w.mu.Lock()
	w.informer = inf
	w.mu.Unlock()
	w.state.Store(peersWatching)
	f.Start(ctx.Done())
	if cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		w.log.Info("peer informer synced")
		w.signal()
	}
	<-ctx.Done()
	f.Shutdown()
}

// hasSynced: the CRD is absent, or the informer has listed.
func (w *peerWatch) hasSynced() bool {
	switch w.state.Load() {
	case peersAbsent:
		return true
	case peersWatching:
		w.mu.Lock()
		inf := w.informer
		w.mu.Unlock()
		return inf.HasSynced()
	}
	return false
}

func (w *peerWatch) list() ([]mesh.RawExternalPeer, error) {
	if w.state.Load() != peersWatching {
		return nil, nil
	}
	w.mu.Lock()
	inf := w.informer
	w.mu.Unlock()
	objs, err := cache.NewGenericLister(inf.GetIndexer(), PeerGVR.GroupResource()).List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list peers from cache: %w", err)
	}
	out := make([]mesh.RawExternalPeer, 0, len(objs))
	for _, o := range objs {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		out = append(out, RawExternalPeer(u))
	}
	slices.SortFunc(out, func(a, b mesh.RawExternalPeer) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// RawExternalPeer translates a Peer object into the mesh's view. Fields of
// the wrong type read as unset: validation is the core's job, and an
// unset public key or allowed-IPs list is refused there.
func RawExternalPeer(u *unstructured.Unstructured) mesh.RawExternalPeer {
	r := mesh.RawExternalPeer{
		Name:       u.GetName(),
		UID:        string(u.GetUID()),
		Generation: u.GetGeneration(),
		Created:    u.GetCreationTimestamp().Time,
	}
	r.PublicKey, _, _ = unstructured.NestedString(u.Object, "spec", "publicKey")
	r.AllowedIPs, _, _ = unstructured.NestedStringSlice(u.Object, "spec", "allowedIPs")
	r.Endpoint, _, _ = unstructured.NestedString(u.Object, "spec", "endpoint")
	if ka, ok, err := unstructured.NestedInt64(u.Object, "spec", "persistentKeepalive"); ok && err == nil {
		r.Keepalive = &ka
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok || m["type"] != mesh.PeerCondition {
			continue
		}
		st := mesh.PeerStatus{}
		st.Accepted, _ = m["status"].(string)
		if st.Accepted != "True" {
			reason, _ := m["reason"].(string)
			st.Reason = meshReason(reason)
			st.Message, _ = m["message"].(string)
		}
		switch g := m["observedGeneration"].(type) {
		case int64:
			st.ObservedGeneration = g
		case float64:
			st.ObservedGeneration = int64(g)
		}
		r.Status = st
	}
	return r
}

// meshReason turns a condition reason ("OverlapsPodCidr") back into the
// mesh's form ("overlaps-pod-cidr"); EventReason is its inverse.
func meshReason(s string) string {
	var b strings.Builder
	for i, c := range s {
		if unicode.IsUpper(c) {
			if i > 0 {
				b.WriteByte('-')
			}
			c = unicode.ToLower(c)
		}
		b.WriteRune(c)
	}
	return b.String()
}

// reasonAccepted is the condition reason of an accepted Peer.
const reasonAccepted = "Valid"

// report writes the Peer's Accepted condition (a merge patch of the status
// subresource: the condition list holds only ours) and, for a refusal, a
// Warning Event on the Peer.
func (w *peerWatch) report(ctx context.Context, rec func(ref *v1.ObjectReference, reason, msg string), component string, p mesh.RawExternalPeer, st mesh.PeerStatus) error {
	reason, msg := reasonAccepted, "valid: added to every node's WireGuard device"
	if st.Accepted != "True" {
		reason, msg = EventReason(st.Reason), st.Message
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []map[string]any{{
		"type": mesh.PeerCondition, "status": st.Accepted, "reason": reason, "message": msg,
		"observedGeneration": st.ObservedGeneration, "lastTransitionTime": metav1.Now().UTC().Format(time.RFC3339),
	}}}})
	if err != nil {
		return err
	}
	_, err = w.dyn.Resource(PeerGVR).Patch(ctx, p.Name, types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: component}, "status")
	if err != nil {
		return fmt.Errorf("patch status of peer %s: %w", p.Name, err)
	}
	if st.Accepted != "True" {
		rec(&v1.ObjectReference{Kind: "Peer", APIVersion: PeerGVR.GroupVersion().String(), Name: p.Name, UID: types.UID(p.UID)},
			reason, "refused by wgmesh: "+msg)
	}
	return nil
}
