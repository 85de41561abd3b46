// Command lifecycle: the termination gate; see internal/command.Lifecycle.
package main

import (
	"os"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/command"
)

func main() { os.Exit(command.Lifecycle(os.Args[1:], app.OSEnv())) }
