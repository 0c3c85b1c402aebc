# One image, two binaries: /kpo-operator and /kpo-agent (the node agent).
# Build: make docker-build IMG=registry.example/kpo:v0.1.0

FROM golang:1.26 AS build
WORKDIR /src
# Dependencies first, so that code edits reuse the module cache layer.
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY cmd/ cmd/
COPY controllers/ controllers/
COPY nodeagent/ nodeagent/
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/...

# The agent drives the kernel over netlink, but iptables mode needs
# iptables-restore (both the nft and legacy variants), and operators debugging
# a node expect nft, ipset, conntrack and ipvsadm next to it.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables ipset conntrack ipvsadm kmod \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/kpo-operator /out/kpo-agent /
# The operator runs as non-root (set in config/manager); the agent as root, privileged.
ENTRYPOINT ["/kpo-operator"]
