# wgmesh — see README.md. Targets that touch the network stack need root.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
BIN := $(CURDIR)/bin
CMDS := wgmesh-agent wgmesh-cni wgmeshctl wgmesh-lab
# The whole suite (unit + root/netns + end-to-end) must stay well inside CI's 90 minutes.
TEST_TIMEOUT ?= 60m

.PHONY: demo-kubelet conformance all deps build test test-unit lint vet-cniclient demo lab-up lab-down tools test-e2e fuzz bench clean image vagrant-test soak vet-tagged
IMAGE ?= wgmesh:dev

all: build

deps:
	@integration/scripts/deps.sh

# Builds every binary that exists under cmd/ into ./bin.
build:
	@mkdir -p $(BIN)
	@for c in $(CMDS); do \
	  if [ -d cmd/$$c ]; then echo "build $$c"; CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/$$c ./cmd/$$c || exit 1; fi; \
	done
	@echo "build install-cni"; CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/install-cni ./deploy/install-cni

# Everything: unit tests, root/netns suites and the end-to-end lab suite. Needs root;
# the root suites fail (never skip) without it.
test: deps tools
	@if [ "$$(id -u)" -ne 0 ]; then echo "make test needs root: the netns/e2e suites fail without it" >&2; exit 1; fi
	$(GO) vet ./...
	@$(MAKE) --no-print-directory vet-cniclient vet-tagged
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	integration/scripts/fuzz.sh

# integration/cniclients/client is a module of its own (so `./...` skips it), built once per
# libcni release by integration/cniclients: vet each build.
vet-cniclient:
	cd integration/cniclients/client && $(GO) vet . && $(GO) vet -modfile=libcni-v1.2.mod . && \
	  $(GO) vet -modfile=libcni-v1.1.mod -tags=libcni_v1_1 .

# The suite behind a build tag (make conformance) is not compiled by ./...:
# vet it so that it keeps building between its long runs.
vet-tagged:
	$(GO) vet -tags conformance ./integration/e2e/

# Every fuzz target for a bounded time (FUZZTIME, default 12s each); part of make test.
fuzz:
	integration/scripts/fuzz.sh

# Unit tests only (no root needed).
test-unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /integration/)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@$(MAKE) --no-print-directory vet-cniclient vet-tagged
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./... || echo "lint: staticcheck unavailable or failed (see above)"

clean:
	rm -rf $(BIN)

# The lab's tools, built from integration/tools (+ integration/tools/runtime) and cached
# under /var/cache/wgmesh/tools: kube-apiserver, kubectl, etcd, kubelet, kube-proxy,
# kube-controller-manager, kube-scheduler, e2e.test, agnhost, containerd (+ shim, ctr),
# loopback and portmap (cold: see docs/real-node-lab.md).
tools: deps
	@integration/tools/build.sh $(BIN)

# Builds everything, brings up a 3-node x 2-pod lab on a real kube-apiserver, shows the
# pod ping matrix and the mesh from node1, then tears the lab down.
demo: deps build tools
	@integration/lab/demo.sh $(BIN)

# The same on the real node stack (containerd, kubelet, kube-proxy per node; wgmesh installed
# with kubectl apply -k deploy/overlays/lab). ~25 s to Ready nodes on 2 cores.
demo-kubelet: deps build tools
	@integration/lab/demo.sh $(BIN) --kubelet

# Keep a lab up to play with (see integration/lab/README.md); remove it with lab-down.
lab-up: deps build tools
	$(BIN)/wgmesh-lab up --nodes 3 --pods 2

lab-down:
	@if [ -x $(BIN)/wgmesh-lab ]; then $(BIN)/wgmesh-lab down; fi

# The upstream [sig-network] e2e specs (e2e.test from k8s.io/kubernetes) against a 3-node
# kubelet lab, run by the ginkgo CLI in 6 parallel processes (~20 min on 2 cores); writes
# docs/conformance.md (passed/failed per spec). Not part of make test,
# which runs the Granular Checks subset (TestRealNodes).
conformance: deps tools
	$(GO) test -count=1 -tags conformance -timeout 80m -run '^TestConformance$$' -v ./integration/e2e/

test-e2e: deps tools
	$(GO) test -count=1 -timeout 45m -v ./integration/e2e/

# The chaos soak (root; long): checked TCP streams and pings between all pod pairs of the
# real-node lab (containerd + kubelet + kube-proxy per node, wgmesh as its DaemonSet) while faults
# are injected at random: agent SIGKILL, apiserver restart, node add/remove, key rotation, link
# flap, 5% loss + 50 ms jitter (netem, or its stated substitute), underlay MTU change, pod churn.
# The seed is printed; SOAK_SEED=N repeats a schedule; SOAK_KUBELET=false soaks the agent lab
# (agent as a plain process) instead. make test runs the same test for 5 minutes (its default)
# beside the other packages. Figures: docs/reliability.md.
# SOAK_TIMEOUT must exceed SOAK_DURATION by ~20 minutes.
SOAK_DURATION ?= 30m
SOAK_SEED ?= 0
SOAK_KUBELET ?= true
SOAK_TIMEOUT ?= 55m
soak: deps tools
	$(GO) test -count=1 -timeout $(SOAK_TIMEOUT) -run '^TestSoak$$' -v ./integration/soak/ \
	    -args -soak.duration=$(SOAK_DURATION) -soak.seed=$(SOAK_SEED) -soak.kubelet=$(SOAK_KUBELET)

# Container image (needs a Docker engine with BuildKit; none runs on the CI machine).
image:
	docker build -f deploy/Dockerfile -t $(IMAGE) .

# The 3-VM suite (needs vagrant and a provider; see integration/vagrant/README.md).
vagrant-test:
	integration/vagrant/run.sh all

# Full benchmark (root; long): plain / upstream wireguard-go / Debian wireguard-go / wgmesh in one
# topology, medians of >= 5 interleaved runs; writes bench-results/report.md and report.json.
# A smoke run with tiny sizes is part of make test.
bench: deps build tools
	$(GO) test -count=1 -timeout 170m -run '^TestBench$$' ./integration/bench/ -v \
	    -args -bench.mode=full -bench.out=$(CURDIR)/bench-results -bench.profile=$(CURDIR)/bench-results
