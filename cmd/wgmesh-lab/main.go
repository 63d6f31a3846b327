// Command wgmesh-lab runs a multi-node wgmesh cluster on this machine (root
// only): a real kube-apiserver and etcd in an underlay network namespace and
// per node a network + mount namespace running the real wgmesh-agent, with
// pods attached by the real CNI plugin. See integration/lab and README.md.
//
// Scripts drive this CLI; its commands and output formats are stable.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/wgmesh/wgmesh/integration/lab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "wgmesh-lab:", err)
		os.Exit(1)
	}
}

// exitError carries a child's exit status through cobra without a message.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func newRoot() *cobra.Command {
	v := viper.New()
	v.SetEnvPrefix("WGMESH_LAB")
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()

	root := &cobra.Command{
		Use:   "wgmesh-lab",
		Short: "Run a multi-node wgmesh lab on a real kube-apiserver, in network namespaces",
		Long: `wgmesh-lab runs wgmesh on one machine: an underlay network namespace with a
bridge (198.51.100.0/24, kube-apiserver on 198.51.100.1), N node namespaces
(network + mount) each running the real wgmesh-agent, and pods attached by the
real wgmesh CNI plugin through libcni. Needs root. Nothing leaves the lab's
namespaces.

Every flag can also be set as WGMESH_LAB_<FLAG> (e.g. WGMESH_LAB_NAME).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.String("name", "lab", "lab name; namespaces are wgl-<name>-*, so labs with different names run side by side")
	pf.String("state-dir", "", "state directory (default /run/wgmesh-lab/<name>)")
	pf.String("bin-dir", "", "directory with wgmesh-agent, wgmesh-cni, etcd, kube-apiserver, kubectl (default: this executable's directory)")
	pf.StringArray("agent-arg", nil, "extra flag for every agent (repeatable), e.g. --agent-arg=--persistent-keepalive=5")
	pf.BoolP("verbose", "v", false, "log progress")
	_ = v.BindPFlags(pf)

	cfg := func() (lab.Config, error) {
		bin := v.GetString("bin-dir")
		self, err := os.Executable()
		if err != nil {
			return lab.Config{}, fmt.Errorf("find own executable: %w", err)
		}
		if bin == "" {
			bin = filepath.Dir(self)
		}
		level := slog.LevelWarn
		if v.GetBool("verbose") {
			level = slog.LevelInfo
		}
		return lab.Config{
			Name:      v.GetString("name"),
			StateDir:  v.GetString("state-dir"),
			BinDir:    bin,
			LabBinary: self,
			AgentArgs: v.GetStringSlice("agent-arg"),
			Log:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
		}, nil
	}
	// open loads an existing lab.
	open := func() (*lab.Lab, error) {
		c, err := cfg()
		if err != nil {
			return nil, err
		}
		l := lab.New(c)
		if err := l.Load(); err != nil {
			return nil, fmt.Errorf("%w (is the lab up? `wgmesh-lab up`)", err)
		}
		return l, nil
	}

	root.AddCommand(
		upCmd(cfg), downCmd(cfg), statusCmd(open), execCmd(open), podExecCmd(open),
		kubectlCmd(open), kubeconfigCmd(open), underlayCmd(open), addNodeCmd(open),
		removeNodeCmd(open), killAgentCmd(open), startAgentCmd(open), pingMatrixCmd(open),
		addPodCmd(open), removePodCmd(open), stopAPIServerCmd(open), startAPIServerCmd(open),
		cniCmd(), clusterDNSCmd(),
	)
	return root
}

func upCmd(cfg func() (lab.Config, error)) *cobra.Command {
	var nodes, pods int
	var kubelet, dualStack, ipv6Underlay bool
	c := &cobra.Command{
		Use:   "up",
		Short: "Start a lab (removing leftovers of an earlier one with the same name first)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conf, err := cfg()
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("verbose") && os.Getenv("WGMESH_LAB_VERBOSE") == "" {
				conf.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
			}
			l := lab.New(conf)
			start := time.Now()
			if err := l.Up(cmd.Context(), lab.UpOptions{Nodes: nodes, Pods: pods, Kubelet: kubelet, DualStack: dualStack, IPv6Underlay: ipv6Underlay}); err != nil {
				return fmt.Errorf("up: %w\n(logs in %s/logs; `wgmesh-lab down --name %s` cleans up)", err, conf.Defaults().StateDir, conf.Defaults().Name)
			}
			fmt.Printf("lab %q up in %s: %d nodes x %d pods\n", conf.Defaults().Name, time.Since(start).Round(100*time.Millisecond), nodes, pods)
			return nil
		},
	}
	c.Flags().IntVar(&nodes, "nodes", 3, "number of nodes")
	c.Flags().IntVar(&pods, "pods", 2, "pods per node")
	c.Flags().BoolVar(&dualStack, "dual-stack", false, "dual-stack pods: every node also gets fd00:10:244:i::/64, every pod an address of each family; agents get --cluster-cidrs=10.244.0.0/16,fd00:10:244::/56; with --kubelet: dual-stack Services (fd00:10:96::/112), kube-controller-manager allocates a /64 per node, and nodes get 2001:db8:100::(10+i) as a second node IP")
	c.Flags().BoolVar(&ipv6Underlay, "ipv6-underlay", false, "add 2001:db8:100::/64 to the underlay and mix endpoints: node i publishes IPv4 (i%3=1), IPv6 (i%3=2), or is IPv6-only (i%3=0); with --kubelet (needs --dual-stack): every node lists its IPv6 node IP first and publishes an IPv6 endpoint, no IPv6-only nodes")
	c.Flags().BoolVar(&kubelet, "kubelet", false, "real node stack per node (containerd + crun, kubelet, kube-proxy; kube-controller-manager and kube-scheduler beside the apiserver); wgmesh installed with kubectl apply -k deploy/overlays/lab")
	return c
}

func downCmd(cfg func() (lab.Config, error)) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Remove everything the lab made (processes, namespaces, mounts, files); safe to repeat",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conf, err := cfg()
			if err != nil {
				return err
			}
			return lab.New(conf).Down(context.WithoutCancel(cmd.Context()))
		},
	}
}

func statusCmd(open func() (*lab.Lab, error)) *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "status",
		Short: "Show nodes and pods (-o tsv: one line per pod, NODE<TAB>POD<TAB>POD-IP)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			switch format {
			case "tsv":
				l.StatusTSV(os.Stdout)
			case "", "table":
				l.StatusTable(os.Stdout)
			default:
				return fmt.Errorf("unknown output format %q (want table or tsv)", format)
			}
			return nil
		},
	}
	c.Flags().StringVarP(&format, "output", "o", "table", "table or tsv")
	return c
}

// execArgv runs argv with the terminal attached and returns its exit status.
func execArgv(ctx context.Context, argv []string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// Let the child see Ctrl-C itself; we only wait for it.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return &exitError{code: ee.ExitCode()}
	}
	return err
}

func execCmd(open func() (*lab.Lab, error)) *cobra.Command {
	return &cobra.Command{
		Use:   "exec NODE -- CMD [ARGS...]",
		Short: "Run a command in a node's network and mount namespaces",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			argv, err := l.NodeCommand(args[0], args[1:]...)
			if err != nil {
				return err
			}
			return execArgv(cmd.Context(), argv)
		},
	}
}

func podExecCmd(open func() (*lab.Lab, error)) *cobra.Command {
	return &cobra.Command{
		Use:   "pod-exec NODE POD -- CMD [ARGS...]",
		Short: "Run a command in a pod's network namespace",
		Args:  cobra.MinimumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			argv, err := l.PodCommand(args[0], args[1], args[2:]...)
			if err != nil {
				return err
			}
			return execArgv(cmd.Context(), argv)
		},
	}
}

func kubectlCmd(open func() (*lab.Lab, error)) *cobra.Command {
	return &cobra.Command{
		Use:   "kubectl -- ARGS...",
		Short: "Run kubectl (built from k8s.io/kubernetes by integration/tools) against the lab as admin",
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			return execArgv(cmd.Context(), l.KubectlCommand(args...))
		},
	}
}

func kubeconfigCmd(open func() (*lab.Lab, error)) *cobra.Command {
	return &cobra.Command{
		Use:   "kubeconfig",
		Short: "Print the admin kubeconfig's path (the apiserver is reachable inside the lab's namespaces only)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			fmt.Println(l.AdminKubeconfig())
			return nil
		},
	}
}

func underlayCmd(open func() (*lab.Lab, error)) *cobra.Command {
	return &cobra.Command{
		Use:   "underlay",
		Short: "Print `NETNS BRIDGE` of the underlay (for captures: ip netns exec NETNS tcpdump -i BRIDGE)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			ns, br := l.Underlay()
			fmt.Println(ns, br)
			return nil
		},
	}
}

func addNodeCmd(open func() (*lab.Lab, error)) *cobra.Command {
	var opt lab.NodeOptions
	c := &cobra.Command{
		Use:   "add-node [NAME]",
		Short: "Add a node (default name node<i>), start its agent and attach --pods pods",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			if len(args) == 1 {
				opt.Name = args[0]
			}
			n, err := l.AddNode(cmd.Context(), opt)
			if err != nil {
				return err
			}
			fmt.Println(n.Name)
			return nil
		},
	}
	c.Flags().IntVar(&opt.Pods, "pods", 2, "pods to attach")
	c.Flags().BoolVar(&opt.NAT, "nat", false, "put the node behind a masquerading NAT namespace (inside 203.0.113.2)")
	c.Flags().StringVar(&opt.Location, "location", "", "put the node into a location: a private network (eth1, 203.0.113.(10+i)) shared with the location's other nodes; its InternalIP is there, its public endpoint on the underlay")
	c.Flags().IntVar(&opt.MTU, "mtu", 0, "underlay MTU of the node (default 1500)")
	c.Flags().StringVar((*string)(&opt.Underlay), "underlay", "", `with up --ipv6-underlay: "ipv6" publishes the node's IPv6 endpoint, "ipv6-only" gives it no IPv4 underlay at all; empty: IPv4 endpoint`)
	c.Flags().BoolVar(&opt.NoAgent, "no-agent", false, "do not start the agent (start-agent later)")
	c.Flags().StringArrayVar(&opt.AgentArgs, "node-agent-arg", nil, "extra flag for this node's agent only (repeatable; kept for start-agent)")
	return c
}

func nodeCmd(use, short string, open func() (*lab.Lab, error), fn func(ctx context.Context, l *lab.Lab, node string) error) *cobra.Command {
	return &cobra.Command{
		Use:   use + " NODE",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			return fn(cmd.Context(), l, args[0])
		},
	}
}

func removeNodeCmd(open func() (*lab.Lab, error)) *cobra.Command {
	return nodeCmd("remove-node", "Delete a node's Node object and remove its agent, pods and namespaces", open,
		func(ctx context.Context, l *lab.Lab, node string) error { return l.RemoveNode(ctx, node) })
}

func killAgentCmd(open func() (*lab.Lab, error)) *cobra.Command {
	return nodeCmd("kill-agent", "SIGKILL a node's agent", open,
		func(_ context.Context, l *lab.Lab, node string) error { return l.KillAgent(node) })
}

func startAgentCmd(open func() (*lab.Lab, error)) *cobra.Command {
	return nodeCmd("start-agent", "Start a node's agent (after kill-agent, or to pick up a new binary)", open,
		func(_ context.Context, l *lab.Lab, node string) error { return l.StartAgent(node) })
}

func addPodCmd(open func() (*lab.Lab, error)) *cobra.Command {
	return nodeCmd("add-pod", "Attach one more pod to a node; prints POD<TAB>IP", open,
		func(ctx context.Context, l *lab.Lab, node string) error {
			p, err := l.AddPod(ctx, node)
			if err != nil {
				return err
			}
			fmt.Printf("%s\t%s\n", p.Name, p.IP)
			return nil
		})
}

func removePodCmd(open func() (*lab.Lab, error)) *cobra.Command {
	return &cobra.Command{
		Use:   "remove-pod NODE POD",
		Short: "Detach a pod (CNI DEL) and remove its namespace",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			return l.RemovePod(cmd.Context(), args[0], args[1])
		},
	}
}

func pingMatrixCmd(open func() (*lab.Lab, error)) *cobra.Command {
	var attempts int
	var ipv6 bool
	c := &cobra.Command{
		Use:   "ping-matrix",
		Short: "Ping every pod from every pod and print the matrix; exit 1 if any pair fails",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			var m lab.Matrix
			switch {
			case ipv6 && !l.State().DualStack:
				return errors.New("--ipv6 needs a dual-stack lab (up --dual-stack)")
			case ipv6:
				m = l.PingMatrix6(cmd.Context(), attempts)
			default:
				m = l.PingMatrix(cmd.Context(), attempts)
			}
			m.Print(os.Stdout)
			if f := m.Failures(); len(f) > 0 {
				return fmt.Errorf("%d pairs unreachable: %s", len(f), strings.Join(f, ", "))
			}
			return nil
		},
	}
	c.Flags().IntVar(&attempts, "attempts", 3, "pings per pair before declaring it unreachable")
	c.Flags().BoolVarP(&ipv6, "ipv6", "6", false, "ping the pods' IPv6 addresses (dual-stack lab)")
	return c
}

func stopAPIServerCmd(open func() (*lab.Lab, error)) *cobra.Command {
	return &cobra.Command{
		Use:   "stop-apiserver",
		Short: "Stop kube-apiserver (etcd and the agents keep running)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			return l.StopAPIServer()
		},
	}
}

func startAPIServerCmd(open func() (*lab.Lab, error)) *cobra.Command {
	return &cobra.Command{
		Use:   "start-apiserver",
		Short: "Start kube-apiserver again and wait until it is ready",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			return l.StartAPIServer(cmd.Context())
		},
	}
}

// cniCmd is what the lab re-executes inside a node to act as its container
// runtime's CNI client.
func cniCmd() *cobra.Command {
	var req string
	c := &cobra.Command{
		Use:    "cni",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return lab.RunCNI(cmd.Context(), req, os.Stdout)
		},
	}
	c.Flags().StringVar(&req, "request", "", "JSON CNIRequest")
	return c
}

// clusterDNSCmd is the kubelet lab's cluster DNS, which the lab starts in
// its underlay namespace (see lab.ClusterDNS).
func clusterDNSCmd() *cobra.Command {
	var kubeconfig, listen, domain string
	c := &cobra.Command{
		Use:    "cluster-dns",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
			if err != nil {
				return fmt.Errorf("kubeconfig: %w", err)
			}
			client, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return fmt.Errorf("client: %w", err)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			return lab.NewClusterDNS(lab.ClusterDNSConfig{Client: client, Listen: listen, Domain: domain, Log: log}).Run(cmd.Context())
		},
	}
	c.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the lab's apiserver")
	c.Flags().StringVar(&listen, "listen", "", "host:port to serve on (UDP and TCP)")
	c.Flags().StringVar(&domain, "domain", "cluster.local", "cluster domain")
	return c
}
