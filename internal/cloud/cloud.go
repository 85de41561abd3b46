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
	// AZ is the availability zone ("" where the provider has none): the planner
	// retires the outdated server in the most crowded zone, so that a surge and its
	// retire leave the servers spread as before.
	AZ string
	// ActionID is the roll action that launched it ("" for instances the roll did not
	// launch); providers make Launch idempotent on it.
	ActionID string
}

// Live reports whether the instance counts toward the group: pending or running.
func (i Instance) Live() bool { return i.State == StatePending || i.State == StateRunning }

// ErrUnknownImage is returned when an image does not exist or is not allowed.
var ErrUnknownImage = errors.New("unknown image")

// GroupState is what a roll records about the group its servers live in, taken
// when the roll starts (Provider.Prepare) and restored when it ends (Provider.End).
// A provider without such a group (local) has none: the roll keeps nil.
type GroupState struct {
	// Suspended are the group's processes the roll suspends: those it wants
	// suspended that were not already (an operator's suspensions stay theirs).
	Suspended []string `json:"suspended,omitempty"`
	// MaxSize is the group's maximum size before the roll; it is restored at the end.
	MaxSize int `json:"max_size,omitempty"`
	// TemplateVersion is the group's launch template version resolved to a number
	// when the roll started: the source of every version the roll creates, and what
	// the group goes back to if the roll fails.
	TemplateVersion string `json:"template_version,omitempty"`
	// GroupVersion is the group's launch template version as the group named it
	// when the roll started ("$Latest", "$Default" or a number): what a failed roll
	// puts back, so a group that followed $Latest follows it again. Empty in a
	// record written before it existed: TemplateVersion is put back instead.
	GroupVersion string `json:"group_version,omitempty"`
	// Released is set once End has run: the processes are resumed and the sizes
	// restored. A handler that finds a finished roll not released releases it.
	Released bool `json:"released,omitempty"`
}

// Survey is what the provider knows about its group that the planner must weigh.
type Survey struct {
	// Problems say why the group is not fit for a roll now (an instance refresh in
	// progress, a warm pool, …); empty when it is.
	Problems []string
	// LaunchFailures are the group's failed launches since the time asked about,
	// oldest first.
	LaunchFailures []LaunchFailure
	// Zones are the availability zones the group spans; none where the provider
	// has no zones.
	Zones []string
}

// LaunchFailure is one failed launch of the group.
type LaunchFailure struct {
	Time    time.Time
	Message string
	// Image says the failure is the image's (not found, not shared, an encryption
	// key the group may not use), so retrying cannot help; false for the
	// capacity's and anything else the group may get past.
	Image bool
}
