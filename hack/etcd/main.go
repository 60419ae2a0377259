// Command etcd is the pinned etcd server, built from its Go module (no release binaries are reachable here).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
