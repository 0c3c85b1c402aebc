# kpo — a Kubernetes operator that runs the cluster's service proxy.
#
# The two commands of the README:
#   make demo   a local cluster: operator, nodes, agents, a Service answering through the proxy
#   make test   every test (unit, envtest against a real kube-apiserver, real-kernel dataplane)

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

IMG ?= kpo:dev
AGENT_IMG ?= $(IMG)

# The version stamped into the binaries (--version, the agents' agentVersion,
# User-Agents) and the images' labels; `make release VERSION=v0.1.0` sets it.
VERSION ?= dev
COMMIT ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null)
LDFLAGS := -X kpo.dev/kpo/version.Version=$(VERSION) -X kpo.dev/kpo/version.Commit=$(COMMIT)

# Tool versions are pinned here and nowhere else.
CONTROLLER_TOOLS_VERSION ?= v0.23.0
KUSTOMIZE_VERSION ?= v5.8.2
GOLANGCI_LINT_VERSION ?= v2.15.0
HELM_VERSION ?= v3.22.0
# Kubernetes release the tests run against: named here and in hack/apiserver.K8sVersion
# only, and required by hack/tools/go.mod (TestOneKubernetesVersion checks the three agree).
K8S_VERSION ?= v1.37.1
# The local cluster's container runtime (hack/build-containerd.sh; hack/cluster pins the same).
CONTAINERD_VERSION ?= v2.4.2

LOCALBIN := $(CURDIR)/bin
K8S_BIN := $(LOCALBIN)/k8s-$(K8S_VERSION)
CONTROLLER_GEN := $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
KUSTOMIZE := $(LOCALBIN)/kustomize-$(KUSTOMIZE_VERSION)
GOLANGCI_LINT := $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
HELM := $(LOCALBIN)/helm-$(HELM_VERSION)

export KPO_K8S_BIN := $(K8S_BIN)
# envtest finds kube-apiserver and etcd here.
export KUBEBUILDER_ASSETS := $(K8S_BIN)

.PHONY: all
all: build

##@ Development

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate the CRDs and the operator's RBAC from markers.
	$(CONTROLLER_GEN) rbac:roleName=kpo-operator crd paths="./api/...;./controllers/..." \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: verify-modules
verify-modules: ## Check the module cache's dependencies against go.sum (go mod verify).
	go mod verify

.PHONY: verify-generated
verify-generated: manifests generate chart ## Fail when committed generated files are stale.
	@git diff --exit-code -- api config charts || { echo "generated files are stale: run 'make manifests generate chart' and commit"; exit 1; }

.PHONY: chart
chart: k8s-binaries ## Regenerate the Helm chart's generated files (crds/, RBAC, admission policy) from config/.
	go run ./hack/mkrelease -chart-only -kubectl $(K8S_BIN)/kubectl

.PHONY: fmt
fmt: ## gofmt the tree.
	gofmt -l -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## go vet.
	go vet ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) ## golangci-lint.
	$(GOLANGCI_LINT) run ./...

##@ Build

.PHONY: build
build: ## Build the operator, node-agent and kubectl-kpo (the kubectl plugin) binaries into bin/.
	CGO_ENABLED=0 go build -ldflags "$(LDFLAGS)" -o $(LOCALBIN)/ ./cmd/...

# The tests need these (kube-scheduler, kubelet: the local cluster; kube-proxy: the migration test and the benchmarks).
TEST_K8S_BINARIES := kube-apiserver etcd kubectl kube-controller-manager kube-scheduler kube-proxy kubelet

.PHONY: k8s-binaries
k8s-binaries: ## Build the Kubernetes binaries the tests run (cached in bin/).
	hack/build-k8s.sh $(K8S_BIN) $(TEST_K8S_BINARIES)

.PHONY: containerd
containerd: ## Build containerd, its runc shim and ctr (the local cluster's runtime; cached in bin/).
	hack/build-containerd.sh $(LOCALBIN)/containerd-$(CONTAINERD_VERSION) $(CONTAINERD_VERSION)

.PHONY: images
images: deps ## Build kpo's images without a container engine: OCI layouts for linux/amd64 and arm64 in bin/images (digests.txt, package lists).
	go run ./hack/mkimages -out $(LOCALBIN)/images -version $(VERSION) -commit "$(COMMIT)" $(IMAGES_FLAGS)

.PHONY: docker-build
docker-build: ## Build the container image (needs a Docker engine; GO_IMAGE/BASE_IMAGE pin the bases by digest).
	docker build -t $(IMG) --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) $(if $(GO_IMAGE),--build-arg GO_IMAGE=$(GO_IMAGE)) $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) .

.PHONY: docker-push
docker-push: ## Push the container image.
	docker push $(IMG)

##@ Release

# The image's repository in the release: the operator runs, and hands the
# agents, $(IMAGE_REPO)@<digest of bin/images> (push the OCI layout
# bin/images/kpo there, e.g. with crane or skopeo, under that digest).
IMAGE_REPO ?= kpo

.PHONY: release
release: k8s-binaries images $(HELM) ## make release VERSION=v0.1.0 [IMAGE_REPO=registry/kpo]: dist/install.yaml (operator pinned by digest) and the Helm chart dist/kpo-<version>.tgz.
	@[ "$(VERSION)" != dev ] || { echo "set the version: make release VERSION=v0.1.0"; exit 1; }
	go run ./hack/mkrelease -version $(VERSION) -image $(IMAGE_REPO) -kubectl $(K8S_BIN)/kubectl \
		-digests $(LOCALBIN)/images/digests.txt -out dist -chart charts/kpo
	$(HELM) lint dist/chart/kpo --namespace kpo-system
	$(HELM) package dist/chart/kpo --version $(patsubst v%,%,$(VERSION)) --app-version $(VERSION) -d dist

##@ Demo

.PHONY: deps
deps: ## Install the Debian packages the demo and the tests need (if missing).
	hack/install-deps.sh

.PHONY: demo
demo: deps k8s-binaries containerd images ## A 3-node local cluster (kubelet + containerd nodes): operator, agents, a Service answering through the proxy, a mode switch.
	go run ./hack/demo $(DEMO_FLAGS)

##@ Test

.PHONY: test
test: deps verify-modules verify-generated vet lint k8s-binaries containerd images $(HELM) ## Run every test: lint, unit, envtest, real kernel, the bounded conformance run.
	@rm -f $(LOCALBIN)/conformance.log
	go test ./... -count=1 -timeout 20m 2>&1 | tee $(LOCALBIN)/test.log
	@cat $(LOCALBIN)/conformance.log 2>/dev/null || true
	@echo "packages: $$(grep -c '^ok ' $(LOCALBIN)/test.log) passed, $$(grep -c '^FAIL' $(LOCALBIN)/test.log) failed"

# The full differential run against upstream kube-proxy: the hand-written table,
# the settings variants and CONFORMANCE_RANDOM generated cases per mode.
CONFORMANCE_RANDOM ?= 1000
CONFORMANCE_SEED ?= 1

.PHONY: conformance
conformance: deps k8s-binaries ## kpo vs upstream kube-proxy on the same objects, every mode: the table + 1,000 random cases per mode (docs/conformance.md).
	@rm -f $(LOCALBIN)/conformance.log
	@status=0; KPO_CONFORMANCE_FULL=1 KPO_CONFORMANCE_RANDOM=$(CONFORMANCE_RANDOM) KPO_CONFORMANCE_SEED=$(CONFORMANCE_SEED) \
		go test ./test/conformance/ -count=1 -v -timeout 600m > $(LOCALBIN)/conformance-test.log 2>&1 || status=$$?; \
	grep -E '^(--- |ok|FAIL)|DIFF' $(LOCALBIN)/conformance-test.log; \
	echo "full log: $(LOCALBIN)/conformance-test.log"; cat $(LOCALBIN)/conformance.log; exit $$status

# The soak: SOAK_SERVICES Services and a steady churn for SOAK_DURATION, both
# modes at once (docs/robustness.md, "Soak"). `make test` runs a 5-minute one.
SOAK_DURATION ?= 30m
SOAK_SERVICES ?= 5000
SOAK_TIMEOUT ?= 3h

.PHONY: soak
soak: deps k8s-binaries ## Churn at 5,000 Services for 30 minutes, nftables and iptables: RSS and goroutine slopes, failed requests and syncs (bin/soak-summary.txt).
	KPO_SOAK_DURATION=$(SOAK_DURATION) KPO_SOAK_SERVICES=$(SOAK_SERVICES) KPO_SOAK_OUT=$(LOCALBIN) \
		go test ./test/soak/ -run 'TestSoak$$' -count=1 -v -timeout $(SOAK_TIMEOUT) 2>&1 \
		| tee $(LOCALBIN)/soak-test.log | grep --line-buffered -Ev '^ +[IEW][0-9]{4} '
	@echo "full log: $(LOCALBIN)/soak-test.log; samples: $(LOCALBIN)/soak-samples.csv; heap profiles: $(LOCALBIN)/soak-*.heap"

# The scale harness: SCALE_NODES simulated nodes against a real API server and
# the real operator (docs/scale.md). 1,000 takes about 10 minutes; 5,000 is
# opt-in (SCALE_NODES=5000, about 20 minutes on 2 cores). `go test ./...` runs
# a bounded 100-node slice.
SCALE_NODES ?= 1000

.PHONY: scale
scale: k8s-binaries ## Measure the operator and the API server with SCALE_NODES (1,000) simulated nodes: figures in bin/scale-N.json (docs/scale.md).
	KPO_SCALE_NODES=$(SCALE_NODES) KPO_SCALE_OUT=$(LOCALBIN)/scale-$(SCALE_NODES).json \
		nice -n 5 go test ./test/scale/ -run 'TestScale$$' -count=1 -v -timeout 60m

.PHONY: bench
bench: deps k8s-binaries ## kpo vs upstream kube-proxy: docs/benchmarks.md (comparison section), docs/kube-proxy-comparison.md/.json (BENCH=full adds 5k×50 and 50k×2).
	KPO_BENCH_WRITE=1 $(if $(filter full,$(BENCH)),KPO_BENCH_LARGE=1) \
		nice -n 5 go test ./test/bench/ -run XXX -bench KubeProxyComparison -benchtime 1x -timeout $(if $(filter full,$(BENCH)),3h,90m)

.PHONY: bench-ipvs
bench-ipvs: deps k8s-binaries ## kube-proxy's IPVS mode vs kpo's, side by side in the qemu VM (1k×2, 10k×2): docs/ipvs-kube-proxy-comparison.md (docs/ipvs-vm-tests.md).
	KPO_BENCH_WRITE=1 nice -n 5 go test ./test/vm/ -run XXX -bench IPVSComparison -benchtime 1x -timeout 90m

# Fuzz targets as package:Fuzz. Their committed corpora (testdata/fuzz/) run in
# every `go test`; the backends' are also replayed on the real kernel
# (TestSyncCorpusOnKernel). See docs/robustness.md, "Fakes and fuzzing".
FUZZ_TARGETS := ./nodeagent/model:FuzzBuildServicePorts ./nodeagent/backend/nftables:FuzzSync ./nodeagent/backend/iptables:FuzzSync
FUZZTIME ?= 2m

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 2m); a failing input lands in the package's testdata/fuzz (commit it).
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; echo "== $$fn ($$pkg), $(FUZZTIME)"; \
		go test $$pkg -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) || exit 1; \
	done

.PHONY: test-unit
test-unit: ## Unit tests only (no API server, no root).
	go test -short ./... -count=1

##@ Deployment

.PHONY: install
install: manifests $(KUSTOMIZE) ## Install the CRDs into the cluster of ~/.kube/config.
	$(KUSTOMIZE) build config/crd | kubectl apply --server-side -f -

.PHONY: uninstall
uninstall: manifests $(KUSTOMIZE) ## Remove the CRDs.
	$(KUSTOMIZE) build config/crd | kubectl delete --ignore-not-found -f -

.PHONY: deploy
deploy: manifests $(KUSTOMIZE) ## Deploy the operator (IMG=registry/kpo:tag) to the cluster of ~/.kube/config.
	cd config/manager && $(KUSTOMIZE) edit set image operator=$(IMG)
	$(KUSTOMIZE) build config/default | kubectl apply --server-side -f -

# undeploy removes the ProxyConfigurations first and waits for them: their
# agents remove the nodes' rules (the operator's finalizer waits at most 2
# minutes per configuration, then says which nodes may keep rules); only then
# do the operator and the CRDs go. Deleting the CRD with configurations left
# would leave it stuck on their finalizers once the operator is gone, and the
# nodes' rules behind. If the operator is not running, nothing is removed:
# start it, or remove the rules with kpo-agent --cleanup and the finalizers by
# hand.
KUBECTL ?= kubectl
UNDEPLOY_TIMEOUT ?= 5m

.PHONY: undeploy
undeploy: ## Remove every ProxyConfiguration (waiting for the nodes' cleanup), then the operator and the CRDs.
	@if $(KUBECTL) get crd proxyconfigurations.proxy.kpo.dev >/dev/null 2>&1; then \
		echo "deleting every ProxyConfiguration; the agents remove their rules (up to $(UNDEPLOY_TIMEOUT))"; \
		$(KUBECTL) delete proxyconfigurations --all --wait --timeout=$(UNDEPLOY_TIMEOUT) || { \
			echo "ProxyConfigurations are still being deleted: is the operator running? ($(KUBECTL) get proxyconfig -o yaml says what they wait for). Nothing else was removed."; \
			exit 1; }; \
	fi
	$(KUBECTL) delete --ignore-not-found -k config/default

##@ Tools

$(CONTROLLER_GEN):
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(LOCALBIN)/controller-gen $@

$(KUSTOMIZE):
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	mv $(LOCALBIN)/kustomize $@

.PHONY: helm
helm: $(HELM) ## Install helm (the release test renders the chart with it).

$(HELM):
	GOBIN=$(LOCALBIN) go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(LOCALBIN)/helm $@

$(GOLANGCI_LINT):
	GOBIN=$(LOCALBIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(LOCALBIN)/golangci-lint $@

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  %-18s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)
