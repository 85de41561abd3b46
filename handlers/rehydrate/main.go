// Command rehydrate: see internal/command.Rehydrate.
package main

import (
	"os"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/command"
)

func main() { os.Exit(command.Rehydrate(os.Args[1:], app.OSEnv())) }
