// Command spindown: see internal/command.Spindown.
package main

import (
	"os"

	"github.com/consul-rehydrate/consul-rehydrate/internal/command"
)

func main() { os.Exit(command.Spindown(os.Args[1:], command.OSEnv())) }
