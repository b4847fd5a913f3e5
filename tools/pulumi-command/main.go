// Command pulumi-resource-command is pdstack's own implementation of the Pulumi "command" resource provider.
// It serves the interface of pulumi-command 1.2.1 (command:remote:Command, command:local:Command) so that the
// pulumi_command Python SDK works unchanged, and reports its version as 1.2.1+pdstack.
package main

import (
	"fmt"
	"os"

	"github.com/pulumi/pulumi/sdk/v3/go/pulumi/provider"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
)

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "--version" || os.Args[1] == "-version") {
		fmt.Println(pluginVersion)
		return
	}
	var prov *cmdProvider
	err := provider.Main("command", func(host *provider.HostClient) (pulumirpc.ResourceProviderServer, error) {
		prov = newProvider(host)
		return prov, nil
	})
	if prov != nil {
		prov.shutdown()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
