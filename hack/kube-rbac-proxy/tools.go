//go:build tools

// Package tools pins the kube-rbac-proxy command that hack/kube-rbac-proxy builds into ./bin.
package tools

import _ "github.com/brancz/kube-rbac-proxy/cmd/kube-rbac-proxy"
