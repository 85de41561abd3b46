package awsfake

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Machines boot and shut down the machines behind the instances a group launches.
// The fake calls them from goroutines of its own, never under its lock and never
// while an HTTP answer waits, so they may take seconds.
type Machines interface {
	// Boot starts the machine for a new instance on ami. It returns the instance's
	// ID and private IP (the fake uses them as the EC2 instance ID, which must start
	// with "i-", and private IP). Until Boot returns the launch counts toward the
	// group's capacity but no instance is visible yet.
	Boot(ctx context.Context, ami string) (instanceID, privateIP string, err error)
	// Shutdown stops it (gracefully); called when the instance is terminated.
	Shutdown(ctx context.Context, instanceID string) error
}

// Readier is optionally implemented by Machines. If it is, a booted instance is
// pending (EC2) and Pending (Auto Scaling) until Ready returns nil, then running and
// InService; if Ready fails the instance is terminated and counted as a failed
// launch. Without it an instance is running and InService as soon as Boot returns.
// The built-in machines implement it with Options.BootDelay.
type Readier interface {
	Ready(ctx context.Context, instanceID string) error
}

// maxLaunchFailures is how many launches in a row may fail before a group stops
// trying (until UpdateAutoScalingGroup or SetDesiredCapacity).
const maxLaunchFailures = 3

// Image is an AMI, as seeded with AddImage.
type Image struct {
	ID           string // "ami-…"; empty: generated
	Name         string
	OwnerID      string    // empty: the account
	CreationDate time.Time // zero: now
	// State is the image state: available, pending, failed, … Empty: available.
	State string
	// DeprecationTime, when set, is written as deprecationTime. Like EC2,
	// DescribeImages hides images deprecated by now unless the caller owns them,
	// passes IncludeDeprecated=true or asks for them by ImageId.
	DeprecationTime *time.Time
	Tags            map[string]string
}

// Group is an Auto Scaling group: what AddGroup seeds, and what Group returns.
type Group struct {
	Name           string
	LaunchTemplate string // launch template name
	// Version is the group's launch template version: a number, "$Latest" or
	// "$Default" (empty: "$Default"). It is resolved at each launch.
	Version           string
	Min, Max, Desired int

	// The rest is only set in snapshots.

	// Instances are the group's members (Pending, InService, Terminating), oldest first.
	Instances []Instance
	// Launching counts launches whose Boot has not returned yet.
	Launching int
	// LaunchErr is set once 3 launches in a row failed (Boot or Ready); the group
	// then launches nothing until UpdateAutoScalingGroup or SetDesiredCapacity.
	LaunchErr error
}

// Instance is a snapshot of an EC2 instance.
type Instance struct {
	ID, ImageID, PrivateIP string
	// State is the EC2 state: pending, running, shutting-down, terminated.
	State string
	// LifecycleState is the Auto Scaling state (Pending, InService, Terminating);
	// empty once the instance has left its group.
	LifecycleState string
	Group          string
	// LaunchTemplateVersion is the version number it was launched from.
	LaunchTemplateVersion string
	LaunchTime            time.Time
	// ShutdownErr is what Machines.Shutdown returned.
	ShutdownErr error
}

type launchTemplate struct {
	id, name       string
	defaultVersion int64
	versions       []*ltVersion // versions[i].number == i+1
}

type ltVersion struct {
	number       int64
	description  string
	imageID      string
	instanceType string
	created      time.Time
}

// resolve finds a version by number, "$Latest" or "$Default".
func (lt *launchTemplate) resolve(v string) (*ltVersion, bool) {
	switch v {
	case "$Latest":
		return lt.versions[len(lt.versions)-1], true
	case "$Default", "":
		return lt.versions[lt.defaultVersion-1], true
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 || n > int64(len(lt.versions)) {
		return nil, false
	}
	return lt.versions[n-1], true
}

// tokenUse is what a CreateLaunchTemplateVersion client token was used for: the
// request, and the version it created.
type tokenUse struct {
	request tokenRequest
	version int64
}

type tokenRequest struct{ template, imageID, description, source string }

type group struct {
	name, arn, template, version string
	min, max, desired            int
	created                      time.Time
	members                      []*instance // Pending, InService, Terminating
	launching                    int
	failures                     int
	launchErr                    error
}

type instance struct {
	id, ip, imageID, reservationID string
	group, templateID, template    string
	templateVersion                int64
	state                          string // EC2
	lifecycle                      string // Auto Scaling; "" once out of the group
	launched, terminated           time.Time
	cancel                         context.CancelFunc // stops Ready
	shutdownErr                    error
}

func (i *instance) live() bool { return i.lifecycle == "Pending" || i.lifecycle == "InService" }

func (i *instance) snapshot() Instance {
	return Instance{
		ID: i.id, ImageID: i.imageID, PrivateIP: i.ip, State: i.state, LifecycleState: i.lifecycle,
		Group: i.group, LaunchTemplateVersion: strconv.FormatInt(i.templateVersion, 10),
		LaunchTime: i.launched, ShutdownErr: i.shutdownErr,
	}
}

// AddImage seeds an AMI and returns its ID. It panics on a duplicate ID or one not
// starting with "ami-".
func (s *Server) AddImage(img Image) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if img.ID == "" {
		img.ID = hexID("ami-", 17)
	}
	if !validID(img.ID, "ami-") || s.image(img.ID) != nil {
		panic(fmt.Sprintf("awsfake: AddImage: bad or duplicate image ID %q", img.ID))
	}
	if img.OwnerID == "" {
		img.OwnerID = s.opts.AccountID
	}
	if img.CreationDate.IsZero() {
		img.CreationDate = time.Now()
	}
	if img.State == "" {
		img.State = "available"
	}
	img.Tags = maps.Clone(img.Tags)
	s.images = append(s.images, &img)
	return img.ID
}

// DeprecateImage sets the image's deprecation time, or clears it when at is nil:
// what EC2's EnableImageDeprecation and DisableImageDeprecation do. From that
// time DescribeImages hides the image from callers who do not own it, unless they
// pass IncludeDeprecated=true or ask for it by ImageId; its owner still sees it,
// with its deprecationTime (EC2 user guide, "Deprecate an Amazon EC2 AMI"; the
// IncludeDeprecated member of DescribeImagesInput in aws-sdk-go-v2/service/ec2).
// EnableImageDeprecation refuses a time in the past and rounds DeprecateAt to the
// minute (EnableImageDeprecationInput.DeprecateAt); this seed takes any time, so
// that a test need not wait for the deprecation to arrive. It panics on an
// unknown image.
func (s *Server) DeprecateImage(id string, at *time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	img := s.image(id)
	if img == nil {
		panic(fmt.Sprintf("awsfake: DeprecateImage: unknown image %q", id))
	}
	if at != nil {
		t := *at
		at = &t
	}
	img.DeprecationTime = at
}

// SetImageTags replaces the image's tags, as CreateTags and DeleteTags on the AMI
// would: DescribeImages's tag filters see the new set at once. It panics on an
// unknown image.
func (s *Server) SetImageTags(id string, tags map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	img := s.image(id)
	if img == nil {
		panic(fmt.Sprintf("awsfake: SetImageTags: unknown image %q", id))
	}
	img.Tags = maps.Clone(tags)
}

// AddLaunchTemplate seeds a launch template whose version 1 (its default and
// latest) launches ami, and returns the template's ID. It panics if the name is
// taken or the image was not added.
func (s *Server) AddLaunchTemplate(name, ami string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.templates[name] != nil || s.image(ami) == nil {
		panic(fmt.Sprintf("awsfake: AddLaunchTemplate(%q, %q): name taken or image unknown", name, ami))
	}
	lt := &launchTemplate{id: hexID("lt-", 17), name: name, defaultVersion: 1}
	lt.versions = []*ltVersion{{number: 1, imageID: ami, instanceType: "t3.micro", created: time.Now()}}
	s.templates[name] = lt
	return lt.id
}

// AddGroup seeds an Auto Scaling group, which at once starts launching Desired
// instances. It panics if the name is taken, the launch template or its version is
// unknown, or not Min <= Desired <= Max.
func (s *Server) AddGroup(g Group) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g.Version == "" {
		g.Version = "$Default"
	}
	lt := s.templates[g.LaunchTemplate]
	if s.groups[g.Name] != nil || lt == nil || g.Min > g.Desired || g.Desired > g.Max {
		panic(fmt.Sprintf("awsfake: AddGroup(%+v): name taken, launch template unknown or sizes out of order", g))
	}
	if _, ok := lt.resolve(g.Version); !ok {
		panic(fmt.Sprintf("awsfake: AddGroup: launch template %q has no version %q", g.LaunchTemplate, g.Version))
	}
	gr := &group{
		name: g.Name, template: g.LaunchTemplate, version: g.Version, min: g.Min, max: g.Max, desired: g.Desired, created: time.Now(),
		arn: fmt.Sprintf("arn:aws:autoscaling:%s:%s:autoScalingGroup:%s:autoScalingGroupName/%s",
			s.opts.Region, s.opts.AccountID, requestID(), g.Name),
	}
	s.groups[g.Name] = gr
	s.reconcile(gr)
}

// Group returns a snapshot of the named group; the zero Group if there is none.
func (s *Server) Group(name string) Group {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[name]
	if g == nil {
		return Group{}
	}
	out := Group{
		Name: g.name, LaunchTemplate: g.template, Version: g.version, Min: g.min, Max: g.max, Desired: g.desired,
		Launching: g.launching, LaunchErr: g.launchErr,
	}
	for _, i := range g.members {
		out.Instances = append(out.Instances, i.snapshot())
	}
	return out
}

// Instances returns a snapshot of every instance EC2 still describes, terminated
// ones included, oldest first.
func (s *Server) Instances() []Instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Instance
	for _, i := range s.sortedInstances() {
		out = append(out, i.snapshot())
	}
	return out
}

func (s *Server) image(id string) *Image {
	for _, img := range s.images {
		if img.ID == id {
			return img
		}
	}
	return nil
}

// sortedInstances drops instances terminated longer than TerminatedTTL ago and
// returns the rest by launch time.
func (s *Server) sortedInstances() []*instance {
	now := time.Now()
	var out []*instance
	for id, i := range s.instances {
		if i.state == "terminated" && now.Sub(i.terminated) > s.opts.TerminatedTTL {
			delete(s.instances, id)
			continue
		}
		out = append(out, i)
	}
	slices.SortFunc(out, func(a, b *instance) int {
		return cmp.Or(a.launched.Compare(b.launched), strings.Compare(a.id, b.id))
	})
	return out
}

// reconcile moves the group towards its desired capacity: it launches while fewer
// instances are live (Pending, InService or still booting) and, above it,
// terminates instances on the oldest launch template versions, oldest first (an
// approximation of the Default termination policy). Called with s.mu held.
func (s *Server) reconcile(g *group) {
	if s.closed {
		return
	}
	live := g.launching
	var members []*instance
	for _, i := range g.members {
		if i.live() {
			live++
			members = append(members, i)
		}
	}
	for ; live < g.desired && g.failures < maxLaunchFailures; live++ {
		s.launch(g)
	}
	slices.SortStableFunc(members, func(a, b *instance) int {
		return cmp.Or(cmp.Compare(a.templateVersion, b.templateVersion), a.launched.Compare(b.launched))
	})
	for _, i := range members {
		if live <= g.desired {
			break
		}
		s.terminate(i)
		live--
	}
}

// launch starts one instance of the group on its launch template version's AMI, as
// resolved now. Called with s.mu held.
func (s *Server) launch(g *group) {
	lt := s.templates[g.template]
	var (
		v   *ltVersion
		err error
	)
	if lt == nil {
		err = fmt.Errorf("launch template %q does not exist", g.template)
	} else if v, _ = lt.resolve(g.version); v == nil {
		err = fmt.Errorf("launch template %q has no version %s", g.template, g.version)
	} else if img := s.image(v.imageID); img == nil || img.State != "available" {
		err = fmt.Errorf("the image id '[%s]' does not exist or is not available", v.imageID)
	}
	g.launching++
	s.wg.Add(1)
	go s.boot(g, lt, v, time.Now(), err)
}

// boot runs Machines.Boot for a launch and records the instance it makes.
func (s *Server) boot(g *group, lt *launchTemplate, v *ltVersion, at time.Time, err error) {
	defer s.wg.Done()
	var id, ip string
	if err == nil {
		id, ip, err = s.machines.Boot(s.ctx, v.imageID)
		if err == nil && !validID(id, "i-") {
			err = fmt.Errorf("machines booted an instance with ID %q, which does not start with i-", id)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g.launching--
	if err == nil && s.instances[id] != nil {
		err = fmt.Errorf("machines booted an instance with ID %q, which is taken", id)
	}
	if err != nil {
		s.launchFailed(g, err)
		return
	}
	inst := &instance{
		id: id, ip: ip, imageID: v.imageID, reservationID: hexID("r-", 17),
		group: g.name, templateID: lt.id, template: lt.name, templateVersion: v.number,
		state: "pending", lifecycle: "Pending", launched: at,
	}
	s.instances[id] = inst
	g.members = append(g.members, inst)
	if r, ok := s.machines.(Readier); ok {
		if !s.closed {
			ctx, cancel := context.WithCancel(s.ctx)
			inst.cancel = cancel
			s.wg.Add(1)
			go s.ready(r, ctx, g, inst)
		}
	} else {
		s.running(g, inst)
	}
	s.reconcile(g)
}

func (s *Server) ready(r Readier, ctx context.Context, g *group, inst *instance) {
	defer s.wg.Done()
	err := r.Ready(ctx, inst.id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if inst.lifecycle != "Pending" {
		return // terminated meanwhile
	}
	if err != nil {
		s.terminate(inst)
		s.launchFailed(g, fmt.Errorf("instance %s did not become ready: %w", inst.id, err))
		return
	}
	s.running(g, inst)
}

func (s *Server) running(g *group, inst *instance) {
	inst.state, inst.lifecycle = "running", "InService"
	g.failures = 0
}

func (s *Server) launchFailed(g *group, err error) {
	g.failures++
	if g.failures >= maxLaunchFailures {
		g.launchErr = fmt.Errorf("%d launches in a row failed, the last: %w", g.failures, err)
	}
	s.reconcile(g)
}

// terminate takes the instance out of service and shuts its machine down; when
// Shutdown returns it is terminated and leaves its group. Called with s.mu held.
func (s *Server) terminate(inst *instance) {
	inst.state, inst.lifecycle = "shutting-down", "Terminating"
	if inst.cancel != nil {
		inst.cancel()
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := s.machines.Shutdown(context.Background(), inst.id)
		s.mu.Lock()
		defer s.mu.Unlock()
		inst.shutdownErr = err
		inst.state, inst.lifecycle, inst.terminated = "terminated", "", time.Now()
		if g := s.groups[inst.group]; g != nil {
			g.members = slices.DeleteFunc(g.members, func(m *instance) bool { return m == inst })
			s.reconcile(g)
		}
	}()
}

func validID(id, prefix string) bool { return strings.HasPrefix(id, prefix) && len(id) > len(prefix) }

// builtinMachines are the default Machines: nothing runs, boots and shutdowns just
// take their delays.
type builtinMachines struct {
	boot, shutdown time.Duration
	mu             sync.Mutex
	n              int
}

func (m *builtinMachines) Boot(context.Context, string) (string, string, error) {
	m.mu.Lock()
	n := m.n
	m.n++
	m.mu.Unlock()
	return hexID("i-", 17), fmt.Sprintf("192.0.2.%d", n%254+1), nil
}

func (m *builtinMachines) Ready(ctx context.Context, _ string) error { return sleep(ctx, m.boot) }

func (m *builtinMachines) Shutdown(ctx context.Context, _ string) error {
	return sleep(ctx, m.shutdown)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
