// Package soak is wgmesh's chaos soak (issue 14.3): on a lab of its own
// (integration/lab; by default the real-node mode: containerd, kubelet and
// kube-proxy per node, wgmesh installed from deploy/overlays/lab as a
// DaemonSet; -soak.kubelet=false takes the agent mode, the built
// wgmesh-agent as a process and CNI called by the lab) it runs
// checked TCP streams and pings between all pod pairs while it injects
// faults at random (seeded): agent SIGKILL, apiserver restart, node add and
// removal, key rotation, underlay link flap, underlay loss and jitter (tc
// netem, or where the kernel lacks sch_netem an nftables loss rule and an
// NFQUEUE delayer, reported as a substitute and asserted), an underlay MTU
// change and pod churn. TestSoak asserts no pod address in the clear on the
// underlay, no stream broken or corrupted but by the removal of its pod,
// convergence after every fault within a bound, no leaked pod IP, and a
// flat agent (RSS, goroutines). `make test` runs it for 5 minutes (the
// -soak.duration default) beside the other packages; `make soak` for 30.
// Figures: docs/reliability.md.
//
// It needs root and fails, never skips, without it.
package soak
