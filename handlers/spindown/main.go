// Command spindown: see internal/spindown.Main. It is built from packages spindown
// and app alone, so that the idle invocations, nearly all of them, stay cheap.
package main

import (
	"os"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/spindown"
)

func main() { os.Exit(spindown.Main(os.Args[1:], app.OSEnv())) }
