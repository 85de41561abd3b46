// Command spinup: see internal/command.Spinup.
package main

import (
	"os"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/command"
)

func main() { os.Exit(command.Spinup(os.Args[1:], app.OSEnv())) }
