# Upstream images of `make cluster-up` whose Go binaries are built here, from the Go module proxy, for machines
# that reach no container registry (`make third-party-images-local`): tagged with upstream's names, so the
# upstream charts run them unchanged. Like upstream's images (gcr.io/distroless/static:nonroot): one static
# binary, uid/gid 65532 "nonroot" with HOME /home/nonroot, a /tmp, nothing else; no shell, no package manager.
# Left out: distroless' CA bundle and tzdata (the controller and kube-rbac-proxy talk only to the API server, whose
# CA the pod's ServiceAccount token mount brings; the agent only to its predictor on localhost, as long as no
# TrainedModel makes its puller download over https and no request logger sends to an https URL, neither of which
# the project uses) and upstream's third_party/ license folder.
# Build context: a folder hack/third-party-images.sh fills: the binary (`binary`) and rootfs/ (etc/passwd, etc/group,
# tmp/ with mode 1777, home/) and an empty nonroot-home/.

FROM scratch AS nonroot
COPY rootfs/ /
COPY --chown=65532:65532 nonroot-home/ /home/nonroot/
# Numeric, so the kubelet can enforce the chart's runAsNonRoot.
USER 65532:65532
WORKDIR /home/nonroot

# kserve/kserve-controller: cmd/manager of github.com/kserve/kserve, at /manager as upstream's Dockerfile has it.
FROM nonroot AS kserve-controller
COPY binary /manager
ENTRYPOINT ["/manager"]

# kserve/agent: cmd/agent of github.com/kserve/kserve, the sidecar KServe injects beside a multi-model predictor
# (no storageUri) with --enable-puller; where and how upstream's agent.Dockerfile puts it (ko's layout).
FROM nonroot AS kserve-agent
WORKDIR /ko-app
COPY binary /ko-app/agent
ENTRYPOINT ["/ko-app/agent"]

# quay.io/brancz/kube-rbac-proxy: the controller pod's metrics sidecar, where upstream's Dockerfile puts it.
FROM nonroot AS kube-rbac-proxy
COPY binary /usr/local/bin/kube-rbac-proxy
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kube-rbac-proxy"]
