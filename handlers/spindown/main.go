// Command spindown: see internal/watch.Spindown. It is built from package watch
// alone, so that the idle invocations, nearly all of them, stay cheap.
package main

import (
	"os"

	"github.com/consul-rehydrate/consul-rehydrate/internal/watch"
)

func main() { os.Exit(watch.Spindown(os.Args[1:], watch.OSEnv())) }
