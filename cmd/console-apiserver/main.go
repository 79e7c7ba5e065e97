// Command console-apiserver serves RBAC-governed terminals into containers as
// the Kubernetes aggregated API consoles.kubecube.io.
package main

import (
	"os"

	"k8s.io/component-base/cli"

	"github.com/kubecube-io/console-apiserver/cmd/console-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewCommand()))
}
