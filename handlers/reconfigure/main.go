// Command reconfigure: see internal/reconfigure.Main.
package main

import (
	"os"

	"github.com/consul-rehydrate/consul-rehydrate/internal/reconfigure"
	"github.com/consul-rehydrate/consul-rehydrate/internal/watch"
)

func main() { os.Exit(reconfigure.Main(os.Args[1:], watch.OSEnv())) }
