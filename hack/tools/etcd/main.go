// Command etcd is the etcd server, built from the pinned Go module so that
// the local control plane needs nothing but Go.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	// etcdmain.Main expects the whole argv, program name included.
	etcdmain.Main(os.Args)
}
