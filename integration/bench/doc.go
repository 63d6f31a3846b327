// Package bench is wgmesh's benchmark harness: throughput, CPU, memory,
// latency, offloads, convergence, control-plane scale and CNI latency of
// wgmesh next to baselines measured in the same run, on this machine, in
// network namespaces it creates (root only; it fails, never skips, without
// root or its tools).
//
// Every data-path variant runs in the same topology
//
//	pod netns ─veth─ bridge ─ tunnel ─ eth0 ─veth─ [underlay bridge] ─veth─ eth0 ─ tunnel ─ bridge ─veth─ pod netns
//
// with two nodes: plain (routed, no tunnel), upstream (wireguard-go built
// from the module version in go.mod), debian (/usr/bin/wireguard-go), and
// wgmesh. wgmesh is the real wgmesh-agent binary on a real kube-apiserver
// (integration/lab) when the lab's binaries are available (-bench.lab), or
// otherwise the "node role": the agent as shipped (mesh/agent, the
// assembly cmd/wgmesh-agent runs: peer restore, metrics, memory limit and
// all), fed by a node list file instead of the apiserver, with pods
// attached by the wgmesh CNI plugin. All
// variants are set up first and measured interleaved (run r of every
// variant before run r+1 of any), so load on the machine hits them alike;
// the report shows medians and ratios.
//
// TestBench with no flags is the smoke run (tiny sizes, under a minute,
// part of `go test ./...`). The full run, which `make bench` does:
//
//	go test -count=1 -timeout 170m -run '^TestBench$' ./integration/bench/ -v \
//	    -args -bench.mode=full -bench.out=bench-results -bench.profile=bench-results
//
// writes bench-results/report.md (the tables, copied to docs/benchmarks.md)
// and report.json (every single run).
package bench
