// Command etcd is etcd's own server (go.etcd.io/etcd/server/v3), built for the test cluster:
// the same entry point as upstream's etcd binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
