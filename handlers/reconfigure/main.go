// Command reconfigure: see internal/reconfigure.Main.
package main

import (
	"os"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/reconfigure"
)

func main() { os.Exit(reconfigure.Main(os.Args[1:], app.OSEnv())) }
