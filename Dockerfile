# One image, two binaries: /kpo-operator and /kpo-agent (the node agent).
# Build: make docker-build IMG=registry.example/kpo:v0.1.0
#
# `make images` builds the same image without a Docker engine, for linux/amd64
# and linux/arm64, reproducibly, as OCI layouts (hack/images: the package list
# there, AgentUserland, is the one below; keep them the same).
#
# The base images are tags by default; a release pins them by digest (tags
# move), e.g.
#   make docker-build GO_IMAGE=golang:1.26@sha256:<digest> BASE_IMAGE=debian:bookworm-slim@sha256:<digest>
# and deploys kpo itself by digest: make deploy IMG=registry.example/kpo@sha256:<digest>
# (the agents then run that digest; docs/security.md).
ARG GO_IMAGE=golang:1.26
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${GO_IMAGE} AS build
WORKDIR /src
# Dependencies first, so that code edits reuse the module cache layer; their
# hashes are checked against go.sum.
COPY go.mod go.sum ./
RUN go mod download && go mod verify
COPY api/ api/
COPY cmd/ cmd/
COPY controllers/ controllers/
COPY nodeagent/ nodeagent/
COPY version/ version/
# Static binaries (no cgo: no libc to match in the image, nothing loaded at run
# time), stamped with the version (make docker-build passes VERSION and COMMIT).
ARG VERSION=dev
ARG COMMIT=
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags="-s -w -X kpo.dev/kpo/version.Version=${VERSION} -X kpo.dev/kpo/version.Commit=${COMMIT}" -o /out/ ./cmd/... \
 && for b in /out/*; do go version -m "$b" | grep -q 'CGO_ENABLED=0' || { echo "$b is not static"; exit 1; }; done

# The agent drives the kernel over netlink, but iptables mode needs
# iptables-restore (both the nft and legacy variants), nftables mode nft, ipvs
# mode ipset; operators debugging a node expect conntrack and ipvsadm next to
# it; kmod lets iptables-legacy load a missing table module; netbase gives
# /etc/protocols, which iptables and nft print names from.
FROM ${BASE_IMAGE}
ARG VERSION=dev
ARG COMMIT=
LABEL org.opencontainers.image.title=kpo org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.revision=${COMMIT} org.opencontainers.image.licenses=Apache-2.0
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables ipset conntrack ipvsadm kmod netbase \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/kpo-operator /out/kpo-agent /
# Non-root by default: the operator runs so (config/manager also says so). The
# agent's DaemonSet asks for root (runAsUser 0) and privileged explicitly.
USER 65532:65532
ENTRYPOINT ["/kpo-operator"]
