#!/usr/bin/env bash
# check.sh — the lab suite's checks across the Vagrant VMs (run by run.sh):
#
#   1. agents: one Ready agent per node, every node Ready and published
#   2. ping matrix: every check pod reaches every other pod on every node
#   3. iperf3 pod<->pod between every pair of nodes; the server sees the
#      client's pod IP (no NAT between pods)
#   4. leaks: tcpdump on every NIC of every VM during 2 and 3 saw no frame
#      with a pod address, no ICMP echo and no iperf3 TCP; between node
#      addresses only WireGuard UDP (and k3s' own API/kubelet TCP)
#   5. agent restart: a node's agent pod deleted -> back Ready, same key,
#      mesh whole again (the traffic gap is measured and printed);
#      then a rolling restart of the DaemonSet -> mesh whole again
#
# Env: WGMESH_SSH_CONFIG (from `vagrant ssh-config`), WGMESH_BUILD_DIR,
# WGMESH_CHECK_IMAGE (an image with ping and iperf3, default netshoot),
# WGMESH_LISTEN_PORT (default 51820), WGMESH_VM_TMP (capture files on the
# VMs, default /tmp), WGMESH_CONVERGE_SECONDS (how long each
# pod pair may take to connect, default 90: the NAT'd node's first handshake).
set -uo pipefail

ssh_cfg="${WGMESH_SSH_CONFIG:?}"
build="${WGMESH_BUILD_DIR:?}"
image="${WGMESH_CHECK_IMAGE:-docker.io/nicolaka/netshoot:v0.13}"
wg_port="${WGMESH_LISTEN_PORT:-51820}"
converge="${WGMESH_CONVERGE_SECONDS:-90}"
vm_tmp="${WGMESH_VM_TMP:-/tmp}" # where captures go on the VMs
vms=(wg1 wg2 wg3)
pod_net=10.244.0.0/16
node_nets=(198.51.100.0/24 203.0.113.0/24)
ns=wgmesh-check

passed=0
failed=0
pass() {
	passed=$((passed + 1))
	echo "PASS: $*"
}
fail() {
	failed=$((failed + 1))
	echo "FAIL: $*"
}

# vm HOST ARGS... runs a command on a VM (arguments quoted for the remote
# shell). Its stdin is /dev/null, so it never eats a `while read` loop's input;
# vm_stdin passes stdin through.
vm() { vm_stdin "$@" </dev/null; }
vm_stdin() {
	local h="$1"
	shift
	ssh -F "$ssh_cfg" -o LogLevel=ERROR "$h" -- "$(printf '%q ' "$@")"
}
# vmsh HOST SCRIPT runs a shell snippet on a VM as is (pipes, redirections).
vmsh() { ssh -n -F "$ssh_cfg" -o LogLevel=ERROR "$1" -- "$2"; }
kc() { vm wg1 sudo k3s kubectl "$@"; }
kc_stdin() { vm_stdin wg1 sudo k3s kubectl "$@"; }

# retry SECONDS CMD... reruns CMD once a second until it succeeds.
retry() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || return 1
		sleep 1
	done
}

diagnose() {
	echo "--- diagnostics"
	kc get nodes -o wide
	kc -n wgmesh-system get pods -o wide
	kc -n wgmesh-system logs daemonset/wgmesh-agent --all-containers --prefix --tail=50 2>/dev/null
	local h
	for h in "${vms[@]}"; do
		echo "--- $h: wg show wgmesh0"
		vm "$h" sudo wg show wgmesh0
		vm "$h" ip route
	done
}

# ---- 1. agents and nodes
check_agents() {
	if retry 300 kc wait --for=condition=Ready node --all --timeout=5s; then
		pass "every node is Ready (wgmesh wrote the CNI config)"
	else
		fail "nodes not Ready: $(kc get nodes --no-headers | tr '\n' ';')"
	fi
	local want ready
	want=$(kc -n wgmesh-system get daemonset wgmesh-agent -o jsonpath='{.status.desiredNumberScheduled}')
	ready=$(kc -n wgmesh-system get daemonset wgmesh-agent -o jsonpath='{.status.numberReady}')
	if [[ "$want" == "${#vms[@]}" && "$ready" == "$want" ]]; then
		pass "one Ready agent per node ($ready/$want)"
	else
		fail "agents Ready $ready of $want, want ${#vms[@]}"
	fi
	local n key
	for n in "${vms[@]}"; do
		key=$(kc get node "$n" -o jsonpath='{.metadata.annotations.wgmesh\.io/public-key}')
		if [[ -n "$key" ]]; then
			pass "$n publishes wgmesh.io/public-key"
		else
			fail "$n has no wgmesh.io/public-key annotation"
		fi
	done
}

# ---- check pods: two per node, each an iperf3 server
start_pods() {
	kc create namespace "$ns" --dry-run=client -o yaml | kc_stdin apply -f - >/dev/null
	local s
	for s in a b; do
		kc_stdin apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: probe-$s, namespace: $ns}
spec:
  selector: {matchLabels: {app: probe-$s}}
  template:
    metadata: {labels: {app: probe-$s}}
    spec:
      tolerations: [{operator: Exists}]
      terminationGracePeriodSeconds: 1
      containers:
        - name: probe
          image: $image
          command: ["iperf3", "-s"]
EOF
	done
	for s in a b; do
		if ! kc -n "$ns" rollout status "daemonset/probe-$s" --timeout=600s >/dev/null; then
			fail "check pods probe-$s not ready (image $image)"
			return 1
		fi
	done
	# name node ip, one line per pod
	kc -n "$ns" get pods -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{"\n"}{end}' |
		sort -k2,2 -k1,1 >"$build/pods"
	local n=0 name node ip cidr
	while read -r name node ip; do
		n=$((n + 1))
		cidr=$(kc get node "$node" -o jsonpath='{.spec.podCIDR}')
		if in_cidr "$ip" "$cidr"; then
			pass "pod $name on $node has $ip in the node's podCIDR $cidr"
		else
			fail "pod $name on $node has $ip, not in the node's podCIDR $cidr"
		fi
	done <"$build/pods"
	if [[ $n -ne $((2 * ${#vms[@]})) ]]; then
		fail "want $((2 * ${#vms[@]})) check pods, have $n"
		return 1
	fi
}

# in_cidr IP CIDR (IPv4)
in_cidr() {
	local ip="$1" net="${2%/*}" bits="${2#*/}" a b c d x y
	[[ -n "$1" && -n "$2" ]] || return 1
	IFS=. read -r a b c d <<<"$ip"
	x=$(((a << 24) | (b << 16) | (c << 8) | d))
	IFS=. read -r a b c d <<<"$net"
	y=$(((a << 24) | (b << 16) | (c << 8) | d))
	local mask=$(((0xffffffff << (32 - bits)) & 0xffffffff))
	(((x & mask) == (y & mask)))
}

pods_lines() { cat "$build/pods"; }

# ---- 2. ping matrix (WAIT = seconds each pair may take to converge)
ping_matrix() {
	local wait="$1" label="$2" bad=0 src snode sip dst dnode dip
	printf '%-28s' "ping ($label)"
	while read -r dst dnode dip; do printf ' %-15s' "$dnode/$dip"; done < <(pods_lines)
	echo
	while read -r src snode sip; do
		printf '%-28s' "$snode/$sip"
		while read -r dst dnode dip; do
			if [[ "$src" == "$dst" ]]; then
				printf ' %-15s' "-"
			elif retry "$wait" kc -n "$ns" exec "$src" -- ping -c 2 -i 0.2 -W 2 -q "$dip"; then
				printf ' %-15s' "ok"
			else
				printf ' %-15s' "FAIL"
				bad=$((bad + 1))
			fi
		done < <(pods_lines)
		echo
	done < <(pods_lines)
	if [[ $bad -eq 0 ]]; then
		pass "ping matrix ($label): every pod reaches every other pod"
	else
		fail "ping matrix ($label): $bad pairs unreachable"
	fi
}

# first pod on a node: name and IP
pod_on() { awk -v n="$1" '$2 == n { print $1, $3; exit }' "$build/pods"; }

# ---- 3. iperf3 between every pair of nodes
iperf_pairs() {
	local s d src sip dst dip out bps logs
	for s in "${vms[@]}"; do
		for d in "${vms[@]}"; do
			[[ "$s" != "$d" ]] || continue
			read -r src sip < <(pod_on "$s")
			read -r dst dip < <(pod_on "$d")
			out=$(vmsh wg1 "sudo k3s kubectl -n $ns exec $src -- iperf3 -c $dip -t 5 -J | jq -r '.end.sum_received.bits_per_second // empty'")
			if [[ -n "$out" ]]; then
				bps=$(awk -v b="$out" 'BEGIN { printf "%.0f", b / 1e6 }')
				pass "iperf3 $s -> $d pod to pod: $bps Mbit/s"
			else
				fail "iperf3 $s -> $d ($src -> $dip) failed"
				continue
			fi
			# The server logs the address it saw: the client's pod IP, not a node's.
			# (Read the whole log first: `kc ... | grep -q` would cut the pipe
			# early and fail under pipefail.)
			logs=$(kc -n "$ns" logs "$dst")
			if grep -qF "Accepted connection from $sip," <<<"$logs"; then
				pass "iperf3 server on $d saw the client's pod IP $sip (no NAT)"
			else
				fail "iperf3 server on $d did not see $sip: $(grep Accepted <<<"$logs" | tail -n 3 | tr '\n' ';')"
			fi
		done
	done
}

# ---- 4. captures on every NIC of every VM
declare -A cap_pids
start_captures() {
	local h ifs i pid
	for h in "${vms[@]}"; do
		# Physical NICs only: the management NIC too (a leak could go there),
		# not wgmesh0 or the pod bridge, where plaintext pod traffic belongs.
		# (WGMESH_SYSFS_NET: a seam for the script's own test.)
		# shellcheck disable=SC2016 # expanded by the VM's shell
		ifs=$(vmsh "$h" 'for d in "${WGMESH_SYSFS_NET:-/sys/class/net}"/*; do [ -e "$d/device" ] && basename "$d"; done')
		if [[ -z "$ifs" ]]; then
			fail "$h: no physical NIC found to capture on"
			continue
		fi
		for i in $ifs; do
			pid=$(vmsh "$h" "sudo sh -c 'nohup timeout 900 tcpdump -i $i -nn -s 96 -w $vm_tmp/wgmesh-cap-$i.pcap >$vm_tmp/wgmesh-cap-$i.log 2>&1 & echo \$!'")
			cap_pids["$h/$i"]=$pid
		done
	done
	sleep 3
}

stop_captures() {
	local k h i
	for k in "${!cap_pids[@]}"; do
		h=${k%%/*}
		vm "$h" sudo kill -INT "${cap_pids[$k]}" 2>/dev/null
	done
	sleep 2
	for k in $(printf '%s\n' "${!cap_pids[@]}" | sort); do
		h=${k%%/*} i=${k#*/}
		analyze_capture "$h" "$i"
	done
}

# count HOST IF FILTER: frames in the capture matching a pcap filter
count() { vmsh "$1" "sudo tcpdump -nn -r $vm_tmp/wgmesh-cap-$2.pcap '$3' 2>/dev/null | wc -l"; }

# verdict N zero|some PASS-MESSAGE FAIL-MESSAGE
verdict() {
	if { [[ $2 == zero ]] && [[ $1 -eq 0 ]]; } || { [[ $2 == some ]] && [[ $1 -gt 0 ]]; }; then
		pass "$3"
	else
		fail "$4"
	fi
}

analyze_capture() {
	local h="$1" i="$2" total n addr on_underlay=0 between
	total=$(count "$h" "$i" "")
	addr=$(vmsh "$h" "ip -o -4 addr show dev $i | awk '{print \$4}'")
	for n in "${node_nets[@]}"; do in_cidr "${addr%/*}" "$n" && on_underlay=1; done
	n=$(count "$h" "$i" "net $pod_net")
	verdict "$n" zero "$h/$i: 0 of $total frames carry a pod address" \
		"$h/$i: $n frames carry a pod address (plaintext pod traffic on the wire)"
	n=$(count "$h" "$i" "icmp[icmptype] == icmp-echo or icmp[icmptype] == icmp-echoreply")
	verdict "$n" zero "$h/$i: no ICMP echo (pod pings stayed inside WireGuard)" \
		"$h/$i: $n ICMP echo frames (pod pings in the clear, or translated)"
	n=$(count "$h" "$i" "tcp port 5201")
	verdict "$n" zero "$h/$i: no iperf3 TCP" "$h/$i: $n iperf3 TCP frames on the wire"
	[[ $on_underlay -eq 1 ]] || return 0
	n=$(count "$h" "$i" "udp port $wg_port")
	verdict "$n" some "$h/$i ($addr): $n WireGuard UDP frames" \
		"$h/$i ($addr): no WireGuard UDP frames: pod traffic did not cross here"
	between="(src net ${node_nets[0]} or src net ${node_nets[1]}) and (dst net ${node_nets[0]} or dst net ${node_nets[1]})"
	n=$(count "$h" "$i" "ip and $between and not (udp port $wg_port or tcp port 6443 or tcp port 10250)")
	verdict "$n" zero "$h/$i: between nodes only WireGuard UDP (+ k3s API/kubelet TCP)" \
		"$h/$i: $n frames between nodes that are neither WireGuard nor k3s control traffic"
}

# ---- 5. agent restart
agent_restart() {
	local node=wg2 key_before key_after old new start took src sip dst dip loss
	key_before=$(kc get node "$node" -o jsonpath='{.metadata.annotations.wgmesh\.io/public-key}')
	old=$(kc -n wgmesh-system get pods -l app.kubernetes.io/component=agent --field-selector "spec.nodeName=$node" -o jsonpath='{.items[0].metadata.name}')
	read -r src sip < <(pod_on wg1)
	read -r dst dip < <(pod_on "$node")
	# Continuous pod traffic across the restart: 60 s at 5 pings a second.
	vm wg1 sudo k3s kubectl -n "$ns" exec "$src" -- ping -i 0.2 -c 300 -W 1 -q "$dip" >"$build/restart-ping.log" 2>&1 &
	local pinger=$!
	sleep 5
	start=$SECONDS
	kc -n wgmesh-system delete pod "$old" --wait=false >/dev/null
	new=""
	until [[ -n "$new" && "$new" != "$old" ]] || ((SECONDS - start > 120)); do
		sleep 1
		new=$(kc -n wgmesh-system get pods -l app.kubernetes.io/component=agent --field-selector "spec.nodeName=$node" -o jsonpath='{.items[0].metadata.name}' 2>/dev/null)
	done
	if [[ -n "$new" && "$new" != "$old" ]] && kc -n wgmesh-system wait --for=condition=Ready "pod/$new" --timeout=120s >/dev/null; then
		took=$((SECONDS - start))
		pass "agent on $node restarted: $new Ready ${took}s after deleting $old"
	else
		fail "agent on $node not Ready again within 240s after deleting $old"
	fi
	key_after=$(kc get node "$node" -o jsonpath='{.metadata.annotations.wgmesh\.io/public-key}')
	if [[ -n "$key_before" && "$key_after" == "$key_before" ]]; then
		pass "agent on $node kept its key across the restart (hostPath /var/lib/wgmesh)"
	else
		fail "agent on $node changed key: $key_before -> $key_after"
	fi
	wait "$pinger"
	loss=$(grep -o '[0-9.]*% packet loss' "$build/restart-ping.log")
	echo "INFO: pod traffic $src -> $dst across the agent restart: ${loss:-no summary} (300 pings, 0.2 s apart)"
	ping_matrix "$converge" "after agent restart"

	if kc -n wgmesh-system rollout restart daemonset/wgmesh-agent >/dev/null &&
		kc -n wgmesh-system rollout status daemonset/wgmesh-agent --timeout=600s >/dev/null; then
		pass "rolling restart of every agent completed (one node at a time)"
	else
		fail "rolling restart of the agents did not complete"
	fi
	ping_matrix "$converge" "after rolling restart"
}

main() {
	check_agents
	if ! start_pods; then
		diagnose
		echo "vagrant-test: $passed passed, $failed failed"
		exit 1
	fi
	start_captures
	# The first round may wait for the NAT'd node's keepalives to open paths.
	ping_matrix "$converge" "first"
	iperf_pairs
	stop_captures
	agent_restart
	local h
	for h in "${vms[@]}"; do
		echo "--- $h: wg show wgmesh0"
		vm "$h" sudo wg show wgmesh0
	done
	[[ $failed -eq 0 ]] || diagnose
	kc delete namespace "$ns" --wait=false >/dev/null
	echo "vagrant-test: $passed passed, $failed failed"
	[[ $failed -eq 0 ]]
}

# Sourcing (for a look at the helpers) runs nothing.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
	main "$@"
fi
