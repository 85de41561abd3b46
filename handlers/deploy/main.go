// Command deploy: see internal/deploy.Main.
package main

import (
	"os"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/deploy"
)

func main() { os.Exit(deploy.Main(os.Args[1:], app.OSEnv())) }
