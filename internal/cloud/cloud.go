// Package cloud holds what every provider speaks in: images, instances and their
// states. The providers themselves live in subpackages (local, aws); the interface
// they satisfy is defined by its user, internal/roll.
package cloud

import (
	"errors"
	"time"
)

// Image is a machine image a server can be launched from.
type Image struct {
	ID      string
	Name    string
	Created time.Time
}

// Instance states, after EC2's lifecycle.
const (
	StatePending      = "pending"
	StateRunning      = "running"
	StateShuttingDown = "shutting-down"
	StateTerminated   = "terminated"
)

// Instance is one server instance of the cluster's group.
type Instance struct {
	ID       string
	ImageID  string
	Address  string // private IP
	State    string
	Launched time.Time
	// ActionID is the roll action that launched it ("" for instances the roll did not
	// launch); providers make Launch idempotent on it.
	ActionID string
}

// Live reports whether the instance counts toward the group: pending or running.
func (i Instance) Live() bool { return i.State == StatePending || i.State == StateRunning }

// ErrUnknownImage is returned when an image does not exist or is not allowed.
var ErrUnknownImage = errors.New("unknown image")
