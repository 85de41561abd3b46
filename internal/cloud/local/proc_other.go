//go:build !linux

package local

import (
	"errors"
	"runtime"
)

// supported reports whether the local provider can run here: it tells its agents
// from reused PIDs through /proc, which only Linux has.
func supported() error {
	return errors.New("the local provider needs Linux (/proc); this system is " + runtime.GOOS + ": run it on Linux, or use provider \"aws\"")
}

// probe is never reached: New refuses to build a Provider here.
func probe(int, string) procView { return procView{desc: "no /proc on " + runtime.GOOS} }

func alive(int, string) bool { return false }
