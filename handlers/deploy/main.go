// Command deploy: see internal/deploy.Main.
package main

import (
	"os"

	"github.com/consul-rehydrate/consul-rehydrate/internal/deploy"
	"github.com/consul-rehydrate/consul-rehydrate/internal/watch"
)

func main() { os.Exit(deploy.Main(os.Args[1:], watch.OSEnv())) }
