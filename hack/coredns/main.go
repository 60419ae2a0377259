// Command coredns is the pinned CoreDNS server, built from its Go module with only the plugins a cluster DNS
// needs (no release image or binary is reachable here). Upstream's main imports core/plugin, which links
// every plugin of plugin.cfg (cloud DNS providers, etcd, ...); this one links nine.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func init() {
	// The directives in plugin.cfg's order, which is the order a query passes the plugins of a server block.
	dnsserver.Directives = []string{
		"reload", "ready", "health", "errors", "loadbalance", "cache", "kubernetes", "loop", "forward",
	}
}

func main() { coremain.Run() }
