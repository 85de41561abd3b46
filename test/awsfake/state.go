package awsfake

import (
	"cmp"
	"context"
	"errors"
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
	// Shutdown stops it (gracefully); called when the instance is terminated,
	// after any termination lifecycle hook has been completed or has timed out.
	Shutdown(ctx context.Context, instanceID string) error
}

// Readier is optionally implemented by Machines. If it is, a booted instance is
// pending (EC2) and Pending (Auto Scaling) until Ready returns nil, then running and
// InService; if Ready fails the instance is terminated and its launch activity
// fails. Without it an instance is running and InService as soon as Boot returns.
// The built-in machines implement it with Options.BootDelay.
type Readier interface {
	Ready(ctx context.Context, instanceID string) error
}

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
	// LaunchError, when set, makes every launch from this (existing, available,
	// filter-matching) image fail with this status message, as an encrypted AMI
	// whose KMS key the Auto Scaling service-linked role may not use does
	// ("Client.InternalError: Client error on launch"; AWS re:Post knowledge
	// center, "kms-iam-ec2-permission"). DescribeImages does not show it.
	LaunchError string
}

// Group is an Auto Scaling group: what AddGroup seeds, and what Group returns.
type Group struct {
	Name           string
	LaunchTemplate string // launch template name
	// Version is the group's launch template version: a number, "$Latest" or
	// "$Default" (empty: "$Default"). It is resolved at each launch.
	Version           string
	Min, Max, Desired int
	// AZs are the group's Availability Zones, in the order the fake breaks
	// placement ties in. Empty: one zone, Options.Region+"a".
	AZs []string
	// Suspended are the suspended processes (SuspendProcesses); in snapshots,
	// sorted.
	Suspended []string
	// NewInstancesProtectedFromScaleIn protects every instance the group launches
	// from then on from scale-in.
	NewInstancesProtectedFromScaleIn bool
	// HealthCheckType is "EC2" (empty: EC2) or "ELB".
	HealthCheckType string
	// HealthCheckGracePeriod is how long after it is launched an instance's
	// health check results are ignored.
	HealthCheckGracePeriod time.Duration
	// MixedInstances makes DescribeAutoScalingGroups show the launch template
	// inside a MixedInstancesPolicy instead of a top-level LaunchTemplate.
	MixedInstances bool
	// WarmPool gives the group a warm pool configuration (shown by
	// DescribeAutoScalingGroups and DescribeWarmPool; the pool holds no instances).
	WarmPool bool
	// MaxInstanceLifetime is shown as MaxInstanceLifetime (seconds); the fake
	// does not replace instances for it. Zero or at least 24h, as AWS accepts
	// (AddGroup panics otherwise).
	MaxInstanceLifetime time.Duration

	// The rest is only set in snapshots.

	// Instances are the group's members (Pending…, InService, Terminating…), oldest first.
	Instances []Instance
	// Launching counts launches whose Boot has not returned yet.
	Launching int
	// LaunchErr is the last launch failure since the group last had a launch
	// succeed; nil once one has. The group keeps retrying with backoff.
	LaunchErr error
}

// Instance is a snapshot of an EC2 instance.
type Instance struct {
	ID, ImageID, PrivateIP string
	// State is the EC2 state: pending, running, shutting-down, terminated.
	State string
	// LifecycleState is the Auto Scaling state (Pending, Pending:Wait, InService,
	// Terminating, Terminating:Wait, Terminating:Proceed); empty once the
	// instance has left its group.
	LifecycleState string
	Group          string
	// AZ is its Availability Zone.
	AZ string
	// LaunchTemplateVersion is the version number it was launched from.
	LaunchTemplateVersion string
	// UserData is the launch template version's UserData (base64, as the API
	// carries it) it was launched with.
	UserData   string
	LaunchTime time.Time
	// ProtectedFromScaleIn is its instance scale-in protection.
	ProtectedFromScaleIn bool
	// HealthStatus is Healthy or Unhealthy.
	HealthStatus string
	// LifecycleActionToken is the token of a lifecycle action it waits on, if any.
	LifecycleActionToken string
	// ShutdownErr is what Machines.Shutdown returned.
	ShutdownErr error
}

// LifecycleHook is a lifecycle hook, as AddLifecycleHook seeds it.
type LifecycleHook struct {
	Name string
	// Transition is "autoscaling:EC2_INSTANCE_TERMINATING" or
	// "autoscaling:EC2_INSTANCE_LAUNCHING".
	Transition string
	// HeartbeatTimeout is how long an instance waits for
	// CompleteLifecycleAction (or the next heartbeat). Zero: 3600 s, AWS's default.
	HeartbeatTimeout time.Duration
	// DefaultResult is what happens when it times out: CONTINUE or ABANDON ("": ABANDON).
	DefaultResult string
}

// Activity is a scaling activity: a launch or a termination, as Activities
// returns it.
type Activity struct {
	ID, Description, Cause string
	// Status is its StatusCode: PreInService, InProgress, MidLifecycleAction,
	// Successful, Failed or Cancelled.
	Status        string
	StatusMessage string
	InstanceID    string // empty for a launch that failed before an instance existed
	// Kind is "launch" or "terminate".
	Kind string
	// Origin says what made the group do it: "Launch" (a launch to reach the
	// desired capacity), "TerminateInstanceInAutoScalingGroup",
	// "SetDesiredCapacity", "UpdateAutoScalingGroup", "AZRebalance",
	// "AlarmNotification", "ScheduledActions", "ReplaceUnhealthy",
	// "MaxInstanceLifetime" or "InstanceRefresh".
	Origin     string
	Start, End time.Time
}

// LaunchTemplateData is what AddLaunchTemplateVersion seeds a version with.
type LaunchTemplateData struct {
	ImageID, InstanceType string
	// UserData is base64, as the API carries it.
	UserData               string
	IamInstanceProfileName string
	SecurityGroupIDs       []string
}

const (
	transitionLaunching   = "autoscaling:EC2_INSTANCE_LAUNCHING"
	transitionTerminating = "autoscaling:EC2_INSTANCE_TERMINATING"
)

// processNames are the processes SuspendProcesses takes (ProcessNames in the
// Auto Scaling API model, docs-2.json: Launch, Terminate, AddToLoadBalancer,
// AlarmNotification, AZRebalance, HealthCheck, InstanceRefresh, ReplaceUnhealthy,
// ScheduledActions), plus RemoveFromLoadBalancerLowPriority, which the user guide
// ("Considerations") says is deprecated but still accepted.
var processNames = []string{
	"Launch", "Terminate", "AddToLoadBalancer", "AlarmNotification", "AZRebalance", "HealthCheck",
	"InstanceRefresh", "ReplaceUnhealthy", "ScheduledActions", "RemoveFromLoadBalancerLowPriority",
}

type launchTemplate struct {
	id, name       string
	defaultVersion int64
	versions       []*ltVersion // versions[i].number == i+1
}

// ltVersion is one launch template version. Its data is the whole
// LaunchTemplateData as the Query protocol flattens it (keys without the
// "LaunchTemplateData." prefix: "ImageId", "SecurityGroupId.1",
// "TagSpecification.1.Tag.1.Key", …), so that CreateLaunchTemplateVersion can copy
// every field of its source, including those the fake does not interpret.
type ltVersion struct {
	number      int64
	description string
	data        map[string]string
	created     time.Time
}

func (v *ltVersion) imageID() string { return v.data["ImageId"] }

func (v *ltVersion) instanceType() string {
	if t := v.data["InstanceType"]; t != "" {
		return t
	}
	return "t3.micro" // invented: a version without a type still launches something
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
// whole request (canonically encoded), and the version it created.
type tokenUse struct {
	request string
	version int64
}

type group struct {
	name, arn, template, version string
	min, max, desired            int
	created                      time.Time
	azs                          []string
	members                      []*instance    // Pending…, InService, Terminating…
	launching                    map[string]int // launches whose Boot has not returned, by AZ
	suspended                    map[string]time.Time
	protectNew                   bool
	healthCheckType              string
	grace                        time.Duration
	mixed, warmPool              bool
	maxLifetime                  time.Duration
	hooks                        []*hook
	activities                   []*activity // oldest first
	policies                     map[string]int
	refreshes                    []*refresh // oldest first

	// capacityOrigin and capacityCause say what last changed the desired
	// capacity; a scale-in it causes carries them.
	capacityOrigin, capacityCause string

	failures   int       // launches failed since the last that succeeded
	retryAt    time.Time // no launch before this (backoff)
	launchErr  error
	failRules  []*failRule
	rebalance  *rebalancing
	rebalanced time.Time // when AZRebalance last looked at the group
}

// rebalancing is an AZRebalance in progress: it launched first and terminates
// once that launch is in service.
type rebalancing struct{ launch *activity }

type failRule struct {
	message string
	left    int // -1: until cleared
}

type hook struct {
	name, transition, defaultResult string
	heartbeat                       time.Duration
}

// action is one lifecycle action: an instance waiting on one hook.
type action struct {
	hook             *hook
	token            string
	deadline, global time.Time
}

type activity struct {
	Activity
	progress int
	az       string
}

type instance struct {
	id, ip, imageID, reservationID string
	group, templateID, template    string
	templateVersion                int64
	instanceType, userData, az     string
	state                          string // EC2
	lifecycle                      string // Auto Scaling; "" once out of the group
	health                         string
	protected                      bool
	launched, visible, terminated  time.Time
	inService                      time.Time
	cancel                         context.CancelFunc // stops Ready
	shutdownErr                    error
	launchAct, termAct             *activity
	actions                        []*action // lifecycle actions it waits on
}

// live reports whether the instance counts toward its group's capacity. A
// terminating instance does not, from the moment the group decides to
// terminate it (Terminating:Wait included): the group launches its replacement
// at once, while a termination hook may still hold the old instance running.
//
// That is the documented default. "The default for an Auto Scaling group is to
// not have an instance maintenance policy, which causes it to respond to
// instance maintenance events with the default behaviors": for a health check
// failure, an instance refresh and the maximum instance lifetime the default is
// "Terminate and launch – New instances are provisioned at the same time your
// existing instances are terminated"; only rebalancing (AZRebalance, Capacity
// Rebalancing, a mixed instances policy update) is "Launch before terminating"
// (user guide, "Instance maintenance policy for Auto Scaling group", table
// "Instance maintenance event default behaviors"; startRebalance models the
// latter). A TerminateInstanceInAutoScalingGroup without decrement is not in
// that table; "If you do not specify the option to decrement the desired
// capacity, Amazon EC2 Auto Scaling launches instances to replace the ones that
// are terminated" (docs-2.json) — invented: at once, like the table's other
// replacements. The fake models no instance maintenance policy (a group with
// MinHealthyPercentage 100 would launch before terminating).
func (i *instance) live() bool {
	return i.lifecycle == "InService" || strings.HasPrefix(i.lifecycle, "Pending")
}

func (i *instance) terminating() bool { return strings.HasPrefix(i.lifecycle, "Terminating") }

func (i *instance) snapshot() Instance {
	out := Instance{
		ID: i.id, ImageID: i.imageID, PrivateIP: i.ip, State: i.state, LifecycleState: i.lifecycle,
		Group: i.group, AZ: i.az, LaunchTemplateVersion: strconv.FormatInt(i.templateVersion, 10),
		UserData: i.userData, LaunchTime: i.launched, ProtectedFromScaleIn: i.protected,
		HealthStatus: i.health, ShutdownErr: i.shutdownErr,
	}
	if len(i.actions) > 0 {
		out.LifecycleActionToken = i.actions[0].token
	}
	return out
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
// latest) launches ami on t3.micro, and returns the template's ID. It panics if
// the name is taken or the image was not added.
func (s *Server) AddLaunchTemplate(name, ami string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.templates[name] != nil || s.image(ami) == nil {
		panic(fmt.Sprintf("awsfake: AddLaunchTemplate(%q, %q): name taken or image unknown", name, ami))
	}
	lt := &launchTemplate{id: hexID("lt-", 17), name: name, defaultVersion: 1}
	lt.versions = []*ltVersion{{number: 1, data: map[string]string{"ImageId": ami, "InstanceType": "t3.micro"}, created: time.Now()}}
	s.templates[name] = lt
	return lt.id
}

// AddLaunchTemplateVersion seeds a new version of the named template with
// exactly d (nothing is copied from another version), makes it the default
// version if setDefault (as ModifyLaunchTemplate would), and returns its number.
// It is how a test makes $Default and $Latest differ in more than the image. It
// panics on an unknown template or image.
func (s *Server) AddLaunchTemplateVersion(name string, d LaunchTemplateData, setDefault bool) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	lt := s.templates[name]
	if lt == nil || d.ImageID != "" && s.image(d.ImageID) == nil {
		panic(fmt.Sprintf("awsfake: AddLaunchTemplateVersion(%q): template or image %q unknown", name, d.ImageID))
	}
	data := map[string]string{}
	for k, v := range map[string]string{
		"ImageId": d.ImageID, "InstanceType": d.InstanceType, "UserData": d.UserData, "IamInstanceProfile.Name": d.IamInstanceProfileName,
	} {
		if v != "" {
			data[k] = v
		}
	}
	for i, sg := range d.SecurityGroupIDs {
		data["SecurityGroupId."+strconv.Itoa(i+1)] = sg
	}
	v := &ltVersion{number: int64(len(lt.versions)) + 1, data: data, created: time.Now()}
	lt.versions = append(lt.versions, v)
	if setDefault {
		lt.defaultVersion = v.number
	}
	return v.number
}

// AddGroup seeds an Auto Scaling group, which at once starts launching Desired
// instances. It panics if the name is taken, the launch template or its version is
// unknown, not Min <= Desired <= Max, an AZ is empty or repeated, a suspended
// process is not one of AWS's, or MaxInstanceLifetime is one AWS refuses.
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
	azs := slices.Clone(g.AZs)
	if len(azs) == 0 {
		azs = []string{s.opts.Region + "a"}
	}
	for i, az := range azs {
		if az == "" || slices.Contains(azs[:i], az) {
			panic(fmt.Sprintf("awsfake: AddGroup: empty or repeated AZ in %q", azs))
		}
	}
	// "If specified, the value must be either 0 or a number equal to or greater
	// than 86,400 seconds (1 day)" (CreateAutoScalingGroupType$MaxInstanceLifetime,
	// docs-2.json), as UpdateAutoScalingGroup checks too.
	if g.MaxInstanceLifetime != 0 && g.MaxInstanceLifetime < minLifetime {
		panic(fmt.Sprintf("awsfake: AddGroup: max instance lifetime %s is neither 0 nor at least 86400 s", g.MaxInstanceLifetime))
	}
	switch g.HealthCheckType {
	case "":
		g.HealthCheckType = "EC2"
	case "EC2", "ELB":
	default:
		panic(fmt.Sprintf("awsfake: AddGroup: health check type %q is neither EC2 nor ELB", g.HealthCheckType))
	}
	gr := &group{
		name: g.Name, template: g.LaunchTemplate, version: g.Version, min: g.Min, max: g.Max, desired: g.Desired, created: time.Now(),
		arn: fmt.Sprintf("arn:aws:autoscaling:%s:%s:autoScalingGroup:%s:autoScalingGroupName/%s",
			s.opts.Region, s.opts.AccountID, requestID(), g.Name),
		azs: azs, launching: map[string]int{}, suspended: map[string]time.Time{}, protectNew: g.NewInstancesProtectedFromScaleIn,
		healthCheckType: g.HealthCheckType, grace: g.HealthCheckGracePeriod, mixed: g.MixedInstances, warmPool: g.WarmPool,
		maxLifetime: g.MaxInstanceLifetime, policies: map[string]int{}, capacityOrigin: "Launch",
	}
	for _, p := range g.Suspended {
		if !slices.Contains(processNames, p) {
			panic(fmt.Sprintf("awsfake: AddGroup: unknown process %q", p))
		}
		gr.suspended[p] = gr.created
	}
	s.groups[g.Name] = gr
	s.reconcile(gr)
}

// minLifetime is the shortest max instance lifetime AWS accepts (see AddGroup).
const minLifetime = 86400 * time.Second

// SetLaunchTime backdates (or moves) an instance's launch time, as DescribeInstances
// reports it, so a test can seed an instance launched long ago (one near its max
// instance lifetime). It reports whether the instance exists.
func (s *Server) SetLaunchTime(id string, t time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	inst := s.instances[id]
	if inst == nil {
		return false
	}
	inst.launched = t
	return true
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
		AZs: slices.Clone(g.azs), Suspended: slices.Sorted(maps.Keys(g.suspended)), NewInstancesProtectedFromScaleIn: g.protectNew,
		HealthCheckType: g.healthCheckType, HealthCheckGracePeriod: g.grace, MixedInstances: g.mixed, WarmPool: g.warmPool,
		MaxInstanceLifetime: g.maxLifetime, Launching: g.launchingCount(), LaunchErr: g.launchErr,
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

func (g *group) launchingCount() int {
	n := 0
	for _, c := range g.launching {
		n += c
	}
	return n
}

// liveCount is the group's capacity as it scales: live members plus launches
// in flight.
func (g *group) liveCount() int {
	n := g.launchingCount()
	for _, i := range g.members {
		if i.live() {
			n++
		}
	}
	return n
}

// azCounts counts live members and launches in flight per AZ.
func (g *group) azCounts() map[string]int {
	counts := map[string]int{}
	for _, az := range g.azs {
		counts[az] = g.launching[az]
	}
	for _, i := range g.members {
		if i.live() {
			counts[i.az]++
		}
	}
	return counts
}

// placeLaunch picks the AZ for a new instance: the one with the fewest
// instances. "Amazon EC2 Auto Scaling attempts to distribute instances evenly
// between the Availability Zones that are enabled for your Auto Scaling group …
// by attempting to launch new instances in the Availability Zone with the fewest
// instances" (user guide, "Auto Scaling benefits"; older Developer Guide,
// "AutoScalingBehavior": "Auto Scaling uses the Availability Zone with the least
// number of instances when launching new instances").
func (g *group) placeLaunch() string {
	counts := g.azCounts()
	best := g.azs[0]
	for _, az := range g.azs[1:] {
		// invented: ties go to the AZ listed first, so tests are deterministic;
		// AWS documents no tie-break.
		if counts[az] < counts[best] {
			best = az
		}
	}
	return best
}

func (g *group) isSuspended(process string) bool {
	_, ok := g.suspended[process]
	return ok
}

func (g *group) hooksFor(transition string) []*hook {
	var out []*hook
	for _, h := range g.hooks {
		if h.transition == transition {
			out = append(out, h)
		}
	}
	return out
}

// setDesired changes the desired capacity and remembers what did, so that the
// scale-in it may cause says so.
func (g *group) setDesired(want int, origin, cause string) {
	g.desired, g.capacityOrigin, g.capacityCause = want, origin, cause
}

// reconcile moves the group towards its desired capacity. Called with s.mu held.
//
//   - It replaces instances marked Unhealthy (terminates them; the launch below
//     replaces them) unless ReplaceUnhealthy or Terminate is suspended: "If you
//     suspend Terminate … ReplaceUnhealthy is inactive"; "If you suspend Launch
//     … ReplaceUnhealthy continues to terminate unhealthy instances, but does not
//     launch replacements" (user guide, "How suspended processes affect other
//     processes"). Scale-in protection does not stop it (user guide, "Use
//     instance scale-in protection": protection does not protect from "Health
//     check replacement if the instance fails health checks").
//   - It launches while fewer instances are live (Pending…, InService or still
//     booting) than desired, unless Launch is suspended or a failed launch's
//     backoff has not run out.
//   - Above the desired capacity it scales in by the default termination policy
//     (pickVictim), never choosing a protected instance.
func (s *Server) reconcile(g *group) {
	if s.closed {
		return
	}
	if !g.isSuspended("ReplaceUnhealthy") && !g.isSuspended("Terminate") {
		for _, i := range slices.Clone(g.members) {
			if i.live() && i.health == "Unhealthy" {
				s.terminate(g, i, "ReplaceUnhealthy", fmt.Sprintf(
					"At %s an instance was taken out of service in response to a health check indicating it is unhealthy.", isoTime(time.Now())))
			}
		}
	}
	target := g.desired
	if g.rebalance != nil {
		target++ // an AZRebalance launches first and terminates after
	}
	live := g.liveCount()
	if live < target && !g.isSuspended("Launch") && !time.Now().Before(g.retryAt) {
		for from := live; live < target; live++ {
			s.launch(g, "Launch", fmt.Sprintf(
				"At %s an instance was started in response to a difference between desired and actual capacity, increasing the capacity from %d to %d.",
				isoTime(time.Now()), from, target))
		}
	}
	for from := live; live > target; live-- {
		victim := s.pickVictim(g, false, false, g.isSuspended("Terminate"))
		if victim == nil {
			// "If all instances in an Auto Scaling group are protected from scale
			// in, and a scale in event occurs, its desired capacity is
			// decremented. However, the Auto Scaling group can't terminate the
			// required number of instances until their instance scale in
			// protection settings are disabled." (user guide, "Use instance
			// scale-in protection to control instance termination")
			break
		}
		s.terminate(g, victim, g.capacityOrigin, fmt.Sprintf(
			"%sAt %s an instance was taken out of service in response to a difference between desired and actual capacity, shrinking the capacity from %d to %d. At %s instance %s was selected for termination.",
			g.capacityCause, isoTime(time.Now()), from, target, isoTime(time.Now()), victim.id))
	}
}

// pickVictim chooses the instance a scale-in terminates, by the default
// termination policy (user guide, "Configure termination policies for Amazon
// EC2 Auto Scaling", Default termination policy):
//
//  1. "Determine which Availability Zones have the most instances, and at least
//     one instance that is not protected from scale in."
//  2. "Determine whether any of the instances use the oldest launch template":
//     modelled as the lowest launch template version (the fake's groups use one
//     template).
//  3. "determine which instances are closest to the next billing hour":
//     approximated as the instance launched earliest (equivalent while
//     instances are younger than an hour, which is all a test sees).
//  4. "terminate one of these instances at random" — invented: the lowest
//     instance ID, so tests are deterministic.
//
// Candidates are live members not protected from scale-in (unless
// ignoreProtection) and, with spareInService, not InService (a scale-in while
// Terminate is suspended: "Suspending the Terminate process applies only to
// instances that are currently in the InService state"; user guide,
// "Considerations"). With
// mostOnly, only an instance in an AZ that has the most instances of all will
// do (AZRebalance). Called with s.mu held.
func (s *Server) pickVictim(g *group, ignoreProtection, mostOnly, spareInService bool) *instance {
	counts := g.azCounts()
	var candidates []*instance
	for _, i := range g.members {
		if !i.live() || i.protected && !ignoreProtection || spareInService && i.lifecycle == "InService" {
			continue
		}
		candidates = append(candidates, i)
	}
	if len(candidates) == 0 {
		return nil
	}
	most := 0
	for _, i := range candidates {
		most = max(most, counts[i.az])
	}
	if mostOnly {
		for _, c := range counts {
			if c > most {
				return nil
			}
		}
	}
	candidates = slices.DeleteFunc(candidates, func(i *instance) bool { return counts[i.az] < most })
	slices.SortFunc(candidates, func(a, b *instance) int {
		return cmp.Or(cmp.Compare(a.templateVersion, b.templateVersion), a.launched.Compare(b.launched), strings.Compare(a.id, b.id))
	})
	return candidates[0]
}

// launch starts one instance of the group in the AZ with the fewest instances, on
// its launch template version as resolved now, and returns its activity. Called
// with s.mu held.
func (s *Server) launch(g *group, origin, cause string) *activity {
	az := g.placeLaunch()
	act := g.addActivity("launch", origin, "Launching a new EC2 instance", cause, az)
	act.Status = "PreInService"
	lt := s.templates[g.template]
	var (
		v   *ltVersion
		err error
	)
	switch {
	case lt == nil:
		//lint:ignore ST1005 AWS's status message, verbatim
		err = fmt.Errorf("The specified launch template, with template name %s, does not exist. Launching EC2 instance failed.", g.template)
	default:
		if v, _ = lt.resolve(g.version); v == nil {
			//lint:ignore ST1005 AWS's status message, verbatim
			err = fmt.Errorf("The specified launch template version %s of launch template %s does not exist. Launching EC2 instance failed.", g.version, lt.id)
		} else if img := s.image(v.imageID()); img == nil || img.State != "available" {
			// What a deregistered, unshared or unavailable AMI does to a launch
			// (user guide, "Troubleshoot Amazon EC2 Auto Scaling: AMI issues").
			//lint:ignore ST1005 AWS's status message, verbatim
			err = fmt.Errorf("The image id '[%s]' does not exist. Launching EC2 instance failed.", v.imageID())
		} else if img.LaunchError != "" {
			err = errors.New(img.LaunchError)
		} else if msg, ok := g.takeFailRule(); ok {
			err = errors.New(msg)
		}
	}
	g.launching[az]++
	s.wg.Add(1)
	go s.boot(g, lt, v, az, act, time.Now(), err)
	return act
}

func (g *group) takeFailRule() (string, bool) {
	for _, r := range g.failRules {
		if r.left == 0 {
			continue
		}
		if r.left > 0 {
			r.left--
		}
		return r.message, true
	}
	return "", false
}

// boot runs Machines.Boot for a launch and records the instance it makes.
func (s *Server) boot(g *group, lt *launchTemplate, v *ltVersion, az string, act *activity, at time.Time, err error) {
	defer s.wg.Done()
	var id, ip string
	if err == nil {
		id, ip, err = s.machines.Boot(s.ctx, v.imageID())
		if err == nil && !validID(id, "i-") {
			err = fmt.Errorf("machines booted an instance with ID %q, which does not start with i-", id)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g.launching[az]--
	if err == nil && s.instances[id] != nil {
		err = fmt.Errorf("machines booted an instance with ID %q, which is taken", id)
	}
	if err != nil {
		s.launchFailed(g, act, err)
		return
	}
	inst := &instance{
		id: id, ip: ip, imageID: v.imageID(), reservationID: hexID("r-", 17),
		group: g.name, templateID: lt.id, template: lt.name, templateVersion: v.number,
		instanceType: v.instanceType(), userData: v.data["UserData"], az: az,
		state: "pending", lifecycle: "Pending", health: "Healthy", protected: g.protectNew,
		launched: at, visible: time.Now().Add(s.opts.DescribeLag), launchAct: act,
	}
	act.InstanceID, act.Description = id, "Launching a new EC2 instance: "+id
	act.progress = 30
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
		act := inst.launchAct
		inst.launchAct = nil
		s.shutdown(g, inst)
		s.launchFailed(g, act, fmt.Errorf("Instance %s did not become ready: %w", inst.id, err))
		return
	}
	s.running(g, inst)
}

// running is a booted (and ready) instance: EC2 running, and InService unless a
// launch lifecycle hook holds it in Pending:Wait ("Pending → Pending:Wait →
// Pending:Proceed → InService"; user guide, "Amazon EC2 Auto Scaling lifecycle
// hooks"). Called with s.mu held.
func (s *Server) running(g *group, inst *instance) {
	inst.state = "running"
	if hs := g.hooksFor(transitionLaunching); len(hs) > 0 {
		inst.lifecycle = "Pending:Wait"
		inst.actions = newActions(hs)
		inst.launchAct.Status, inst.launchAct.progress = "MidLifecycleAction", 50
		return
	}
	s.inService(g, inst)
}

func (s *Server) inService(g *group, inst *instance) {
	inst.lifecycle, inst.actions, inst.inService = "InService", nil, time.Now()
	if act := inst.launchAct; act != nil {
		act.Status, act.progress, act.End = "Successful", 100, time.Now()
	}
	g.failures, g.retryAt, g.launchErr = 0, time.Time{}, nil
	if g.rebalance != nil && g.rebalance.launch == inst.launchAct {
		s.finishRebalance(g)
	}
	s.reconcile(g)
}

// launchFailed records a failed launch and backs off. "Amazon EC2 Auto Scaling
// can suspend processes for Auto Scaling groups that repeatedly fail to launch
// instances … that have been trying to launch instances for over 24 hours" (user
// guide, "Suspend and resume processes": an administrative suspension): until
// then the group keeps trying. invented: the schedule (LaunchRetryBase doubling
// to LaunchRetryMax); AWS documents that it retries, not when, and the fake never
// suspends administratively (a test runs for seconds, not a day).
func (s *Server) launchFailed(g *group, act *activity, err error) {
	if act != nil {
		act.Status, act.StatusMessage, act.progress, act.End = "Failed", err.Error(), 100, time.Now()
		act.Description = "Launching a new EC2 instance.  Status Reason: " + err.Error()
		if act.InstanceID != "" {
			act.Description = "Launching a new EC2 instance: " + act.InstanceID + ".  Status Reason: " + err.Error()
		}
		if g.rebalance != nil && g.rebalance.launch == act {
			g.rebalance = nil
		}
	}
	g.failures++
	g.launchErr = err
	backoff := s.opts.LaunchRetryBase
	for n := 1; n < g.failures && backoff < s.opts.LaunchRetryMax; n++ {
		backoff *= 2
	}
	g.retryAt = time.Now().Add(min(backoff, s.opts.LaunchRetryMax))
	s.reconcile(g)
}

// terminate takes the instance out of service. A termination lifecycle hook
// holds it in Terminating:Wait — still running in EC2, its machine not shut down
// — until every hook's action is completed or times out; then (or at once,
// without hooks) it is Terminating(:Proceed) and shutting down, and once
// Machines.Shutdown returns it is terminated and leaves its group ("Terminating →
// Terminating:Wait → Terminating:Proceed → Terminated"; user guide, "Amazon EC2
// Auto Scaling lifecycle hooks"). Called with s.mu held.
func (s *Server) terminate(g *group, inst *instance, origin, cause string) {
	if inst.terminating() || inst.lifecycle == "" {
		return
	}
	inst.termAct = g.addActivity("terminate", origin, "Terminating EC2 instance: "+inst.id, cause, inst.az)
	inst.termAct.InstanceID = inst.id
	if inst.cancel != nil {
		inst.cancel()
	}
	if act := inst.launchAct; act != nil && act.Status != "Successful" {
		act.Status, act.StatusMessage, act.End = "Cancelled", "Instance "+inst.id+" was terminated before it entered service.", time.Now()
		if g.rebalance != nil && g.rebalance.launch == act {
			g.rebalance = nil
		}
	}
	if hs := g.hooksFor(transitionTerminating); len(hs) > 0 {
		inst.lifecycle = "Terminating:Wait"
		inst.actions = newActions(hs)
		inst.termAct.Status, inst.termAct.progress = "MidLifecycleAction", 50
		return
	}
	inst.lifecycle, inst.actions = "Terminating", nil
	s.shutdown(g, inst)
}

// shutdown shuts the instance's machine down; when Machines.Shutdown returns it
// is terminated and leaves its group. Called with s.mu held.
func (s *Server) shutdown(g *group, inst *instance) {
	if inst.lifecycle == "Pending" {
		inst.lifecycle = "Terminating"
	}
	inst.state, inst.actions = "shutting-down", nil
	if inst.cancel != nil {
		inst.cancel()
	}
	if act := inst.termAct; act != nil {
		act.Status, act.progress = "InProgress", 75
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := s.machines.Shutdown(context.Background(), inst.id)
		s.mu.Lock()
		defer s.mu.Unlock()
		inst.shutdownErr = err
		inst.state, inst.lifecycle, inst.terminated = "terminated", "", time.Now()
		if act := inst.termAct; act != nil {
			act.Status, act.progress, act.End = "Successful", 100, time.Now()
		}
		g.members = slices.DeleteFunc(g.members, func(m *instance) bool { return m == inst })
		s.reconcile(g)
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
