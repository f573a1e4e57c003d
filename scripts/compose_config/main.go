// compose_config loads a compose file the way `docker compose [--profile P] config -q` does
// (compose-go, the library docker compose is built on: YAML, interpolation, the Compose
// Specification's JSON schema, profiles) and prints each enabled service with its profiles.
// It exits 1 with the loader's message on a file docker compose would refuse.
//
//	cd scripts/compose_config && go run . ../../docker-compose.yml cluster
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: compose_config <compose file> [profile ...]")
		os.Exit(2)
	}
	file, profiles := os.Args[1], os.Args[2:]
	opts, err := cli.NewProjectOptions(
		[]string{file}, cli.WithProfiles(profiles), cli.WithOsEnv, cli.WithName("streamproc"),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	names := project.ServiceNames()
	sort.Strings(names)
	for _, name := range names {
		fmt.Printf("%s %s\n", name, strings.Join(project.Services[name].Profiles, ","))
	}
}
