package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/wgmesh/wgmesh/mesh"
	"github.com/wgmesh/wgmesh/mesh/agentstate"
	"github.com/wgmesh/wgmesh/mesh/kube"
)

// ErrRotationTimeout is returned when the agent did not answer a rotation
// request in time.
var ErrRotationTimeout = errors.New("key rotation not answered")

const rotateHelp = `rotate-key asks a node's wgmesh-agent to replace its WireGuard key: it sets the
annotation ` + mesh.AnnotationRotateKey + `=<request id> on the Node. The agent generates a new
private key, replaces its key file atomically (the old key is kept nowhere), sets
the key on its device (peers and sessions' endpoints stay), and publishes the new
public key together with ` + mesh.AnnotationKeyRotated + `=<request id>. Every other agent sees
the new key through its Node watch and swaps the peer. Until a peer has swapped,
the node cannot start sessions with it; the outage is the time that takes.

The same request works from anywhere with API access:
  on the node itself     wgmeshctl rotate-key   (node name from the agent's state file;
                         credentials from --kubeconfig, $KUBECONFIG, ~/.kube/config or,
                         in a pod, the service account; the kubelet's kubeconfig works,
                         it may patch its own Node)
  as an operator         wgmeshctl rotate-key --node-name NODE --kubeconfig ADMIN.conf
                         (--node-name defaults to the node in the agent's state file)
  with kubectl only      kubectl annotate node NODE --overwrite ` + mesh.AnnotationRotateKey + `=$(date +%s%N)

The request value must be one the Node never had. With --wait (default 2m) the
command waits for the agent's answer and prints the old and new public key.`

// rotateOptions configures one rotation request.
type rotateOptions struct {
	node    string
	request string        // the nonce; empty: a fresh one
	wait    time.Duration // 0: do not wait for the answer
	poll    time.Duration
}

// rotateResult reports a rotation.
type rotateResult struct {
	Node    string
	Request string
	OldKey  string
	NewKey  string // empty when not waited for
	Took    time.Duration
}

func newRotateKeyCommand(stdout io.Writer, cfg func() *viper.Viper) *cobra.Command {
	var o rotateOptions
	cmd := &cobra.Command{
		Use:   "rotate-key",
		Short: "make a node's agent replace its WireGuard key (via the " + mesh.AnnotationRotateKey + " annotation)",
		Long:  rotateHelp,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := cfg()
			if v != nil {
				o.node = v.GetString(keyNodeName)
			}
			if o.node == "" && v != nil {
				stateFile := v.GetString(keyStateFile)
				if stateFile == "" {
					stateFile = agentstate.Path(v.GetString(keyRunDir))
				}
				st, err := agentstate.Read(stateFile)
				if err != nil {
					return fmt.Errorf("no --node-name and no agent state to take it from: %w", err)
				}
				o.node = st.Node
			}
			if o.node == "" {
				return errors.New("which node? pass --node-name")
			}
			kubeconfig := ""
			if f := cmd.Flag(keyKubeconfig); f != nil {
				kubeconfig = f.Value.String()
			}
			c, err := apiClient(kubeconfig)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			res, err := rotateKey(ctx, c, o)
			if err != nil {
				return err
			}
			if res.NewKey == "" {
				fmt.Fprintf(stdout, "requested key rotation of node %s (request %s); current public key %s\n", res.Node, res.Request, res.OldKey)
				return nil
			}
			fmt.Fprintf(stdout, "node %s rotated its key (request %s) in %s\n  old public key: %s\n  new public key: %s\n",
				res.Node, res.Request, res.Took.Round(time.Millisecond), res.OldKey, res.NewKey)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.request, "request-id", "", "request value to set (default: a fresh timestamp+random id)")
	f.DurationVar(&o.wait, "wait", 2*time.Minute, "wait this long for the agent's answer; 0 = do not wait")
	o.poll = 200 * time.Millisecond
	return cmd
}

// userAgent names wgmeshctl to the API server and as field manager.
const userAgent = "wgmeshctl"

// apiClient builds a client from an explicit kubeconfig path, else the
// usual $KUBECONFIG / ~/.kube/config rules, else the in-cluster service
// account.
func apiClient(kubeconfig string) (kubernetes.Interface, error) {
	c, err := kube.NewClient(kube.ClientConfig{Kubeconfig: kubeconfig, DefaultRules: true, UserAgent: userAgent})
	if err != nil {
		return nil, fmt.Errorf("%w (pass --kubeconfig)", err)
	}
	return c, nil
}

// newRequestID returns a value no Node had before: the time and 6 random
// bytes.
func newRequestID(now time.Time) (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:]), nil
}

// rotateKey sets the rotation request on the Node and, if o.wait > 0,
// waits until the agent answers it.
func rotateKey(ctx context.Context, c kubernetes.Interface, o rotateOptions) (rotateResult, error) {
	res := rotateResult{Node: o.node, Request: o.request}
	if res.Request == "" {
		var err error
		if res.Request, err = newRequestID(time.Now()); err != nil {
			return res, fmt.Errorf("request id: %w", err)
		}
	}
	start := time.Now()
	n, err := kube.RequestKeyRotation(ctx, c, o.node, res.Request, userAgent)
	if n != nil {
		res.OldKey = n.Annotations[mesh.AnnotationPublicKey]
	}
	if err != nil {
		return res, err
	}
	nodes := c.CoreV1().Nodes()
	if o.wait <= 0 {
		return res, nil
	}
	poll := o.poll
	if poll <= 0 {
		poll = 200 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(ctx, o.wait)
	defer cancel()
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		n, err := nodes.Get(ctx, o.node, metav1.GetOptions{})
		if err == nil && n.Annotations[mesh.AnnotationKeyRotated] == res.Request {
			res.NewKey = n.Annotations[mesh.AnnotationPublicKey]
			res.Took = time.Since(start)
			if res.NewKey == res.OldKey {
				return res, fmt.Errorf("node %q answered request %s but still publishes its old key", o.node, res.Request)
			}
			return res, nil
		}
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("%w by node %q within %s (request %s is set; is wgmesh-agent running there? see its log): %w",
				ErrRotationTimeout, o.node, o.wait, res.Request, ctx.Err())
		case <-t.C:
		}
	}
}
