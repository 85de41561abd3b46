package awsfake

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// members is a Query protocol list: <Xxx><member>…</member></Xxx>.
type members[T any] struct {
	Members []T `xml:"member"`
}

type xmlLaunchTemplateSpec struct {
	LaunchTemplateID   string `xml:"LaunchTemplateId"`
	LaunchTemplateName string
	Version            string
}

type xmlGroupInstance struct {
	InstanceID           string `xml:"InstanceId"`
	InstanceType         string
	AvailabilityZone     string
	LifecycleState       string
	HealthStatus         string
	LaunchTemplate       xmlLaunchTemplateSpec
	ImageID              string `xml:"ImageId"`
	ProtectedFromScaleIn bool
}

type xmlGroup struct {
	AutoScalingGroupName             string
	AutoScalingGroupARN              string
	LaunchTemplate                   xmlLaunchTemplateSpec
	MinSize                          int
	MaxSize                          int
	DesiredCapacity                  int
	DefaultCooldown                  int
	AvailabilityZones                members[string]
	LoadBalancerNames                members[string]
	TargetGroupARNs                  members[string]
	HealthCheckType                  string
	HealthCheckGracePeriod           int
	Instances                        *members[xmlGroupInstance]
	CreatedTime                      string
	VPCZoneIdentifier                string
	TerminationPolicies              members[string]
	NewInstancesProtectedFromScaleIn bool
	ServiceLinkedRoleARN             string
}

type describeAutoScalingGroupsResult struct {
	AutoScalingGroups members[xmlGroup]
}

func (s *Server) describeAutoScalingGroups(p url.Values) (any, error) {
	names := list(p, "AutoScalingGroupNames.member")
	includeInstances := p.Get("IncludeInstances") != "false"
	out := &describeAutoScalingGroupsResult{}
	var gs []*group
	for _, g := range s.groups {
		if len(names) == 0 || slices.Contains(names, g.name) {
			gs = append(gs, g)
		}
	}
	slices.SortFunc(gs, func(a, b *group) int { return strings.Compare(a.name, b.name) })
	for _, g := range gs {
		lt := s.templates[g.template]
		x := xmlGroup{
			AutoScalingGroupName: g.name,
			AutoScalingGroupARN:  g.arn,
			LaunchTemplate:       xmlLaunchTemplateSpec{LaunchTemplateID: lt.id, LaunchTemplateName: lt.name, Version: g.version},
			MinSize:              g.min, MaxSize: g.max, DesiredCapacity: g.desired, DefaultCooldown: 300,
			AvailabilityZones: members[string]{[]string{s.opts.Region + "a"}},
			HealthCheckType:   "EC2", HealthCheckGracePeriod: 300, CreatedTime: isoTime(g.created),
			TerminationPolicies: members[string]{[]string{"Default"}},
			ServiceLinkedRoleARN: "arn:aws:iam::" + s.opts.AccountID +
				":role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling",
		}
		if includeInstances {
			x.Instances = &members[xmlGroupInstance]{}
			for _, i := range g.members {
				x.Instances.Members = append(x.Instances.Members, xmlGroupInstance{
					InstanceID: i.id, InstanceType: "t3.micro", AvailabilityZone: s.opts.Region + "a",
					LifecycleState: i.lifecycle, HealthStatus: "Healthy", ImageID: i.imageID,
					LaunchTemplate: xmlLaunchTemplateSpec{
						LaunchTemplateID: i.templateID, LaunchTemplateName: i.template,
						Version: strconv.FormatInt(i.templateVersion, 10),
					},
				})
			}
		}
		out.AutoScalingGroups.Members = append(out.AutoScalingGroups.Members, x)
	}
	return out, nil
}

// findGroup finds the group a request names by AutoScalingGroupName.
func (s *Server) findGroup(p url.Values) (*group, error) {
	name := p.Get("AutoScalingGroupName")
	if name == "" {
		return nil, required("autoScalingGroupName")
	}
	if g := s.groups[name]; g != nil {
		return g, nil
	}
	return nil, validationError("AutoScalingGroup name not found - AutoScalingGroup '%s' not found", name)
}

func required(field string) error {
	return validationError("1 validation error detected: Value null at '%s' failed to satisfy constraint: Member must not be null", field)
}

// intParam reads an optional integer parameter.
func intParam(p url.Values, key string) (int, bool, error) {
	if !p.Has(key) {
		return 0, false, nil
	}
	n, err := strconv.Atoi(p.Get(key))
	if err != nil {
		return 0, false, validationError("Value '%s' at '%s' failed to satisfy constraint: Member must be an integer", p.Get(key), key)
	}
	return n, true, nil
}

func (s *Server) updateAutoScalingGroup(p url.Values) (any, error) {
	g, err := s.findGroup(p)
	if err != nil {
		return nil, err
	}
	lo, hasMin, err := intParam(p, "MinSize")
	if err != nil {
		return nil, err
	}
	hi, hasMax, err := intParam(p, "MaxSize")
	if err != nil {
		return nil, err
	}
	want, hasDesired, err := intParam(p, "DesiredCapacity")
	if err != nil {
		return nil, err
	}
	if !hasMin {
		lo = g.min
	}
	if !hasMax {
		hi = g.max
	}
	template, version := g.template, g.version
	if hasKeyWithPrefix(p, "LaunchTemplate.") {
		name, id := p.Get("LaunchTemplate.LaunchTemplateName"), p.Get("LaunchTemplate.LaunchTemplateId")
		lt := s.templates[name]
		for _, t := range s.templates {
			if name == "" && id != "" && t.id == id {
				lt = t
			}
		}
		if lt == nil {
			return nil, validationError("You must use a valid fully-formed launch template. The specified launch template, with template name %s, does not exist.", name+id)
		}
		version = p.Get("LaunchTemplate.Version")
		if version == "" {
			version = "$Default"
		}
		if _, ok := lt.resolve(version); !ok {
			return nil, validationError("You must use a valid fully-formed launch template. Could not find launch template version %s for launch template %s.", version, lt.id)
		}
		template = lt.name
	}
	if lo > hi {
		return nil, validationError("Max bound, %d, must be greater than or equal to min bound, %d", hi, lo)
	}
	if hasDesired && (want < lo || want > hi) {
		return nil, validationError("Desired capacity:%d must be between the specified min size:%d and max size:%d", want, lo, hi)
	}
	if !hasDesired {
		// Like AWS: a new MinSize above, or MaxSize below, the desired capacity
		// moves the desired capacity with it.
		want = min(max(g.desired, lo), hi)
	}
	g.template, g.version, g.min, g.max, g.desired = template, version, lo, hi, want
	g.failures, g.launchErr = 0, nil
	s.reconcile(g)
	return nil, nil
}

func (s *Server) setDesiredCapacity(p url.Values) (any, error) {
	g, err := s.findGroup(p)
	if err != nil {
		return nil, err
	}
	want, ok, err := intParam(p, "DesiredCapacity")
	if err != nil {
		return nil, err
	}
	switch {
	case !ok:
		return nil, required("desiredCapacity")
	case want > g.max:
		return nil, validationError("New SetDesiredCapacity value %d is above max value %d for the AutoScalingGroup.", want, g.max)
	case want < g.min:
		return nil, validationError("New SetDesiredCapacity value %d is below min value %d for the AutoScalingGroup.", want, g.min)
	}
	g.desired = want
	g.failures, g.launchErr = 0, nil
	s.reconcile(g)
	return nil, nil
}

type xmlActivity struct {
	ActivityID           string `xml:"ActivityId"`
	AutoScalingGroupName string
	Description          string
	Cause                string
	StartTime            string
	StatusCode           string
	Progress             int
	Details              string
}

type terminateInstanceInAutoScalingGroupResult struct {
	Activity xmlActivity
}

func (s *Server) terminateInstanceInAutoScalingGroup(p url.Values) (any, error) {
	id := p.Get("InstanceId")
	if id == "" {
		return nil, required("instanceId")
	}
	var decrement bool
	switch p.Get("ShouldDecrementDesiredCapacity") {
	case "true":
		decrement = true
	case "false":
	default:
		return nil, required("shouldDecrementDesiredCapacity")
	}
	inst := s.instances[id]
	if inst == nil || inst.lifecycle == "" || s.groups[inst.group] == nil {
		return nil, validationError("Instance Id not found - No managed instance found for instance ID: %s", id)
	}
	g := s.groups[inst.group]
	now := time.Now()
	act := xmlActivity{
		ActivityID: requestID(), AutoScalingGroupName: g.name, Description: "Terminating EC2 instance: " + id,
		StartTime: isoTime(now), StatusCode: "InProgress", Details: fmt.Sprintf(`{"Availability Zone":"%sa"}`, s.opts.Region),
	}
	if inst.lifecycle == "Terminating" {
		// Already on its way out: nothing changes (the desired capacity is not
		// decremented twice).
		act.Cause = fmt.Sprintf("At %s instance %s was already terminating.", isoTime(now), id)
		return &terminateInstanceInAutoScalingGroupResult{act}, nil
	}
	from := g.desired
	if decrement {
		if g.desired-1 < g.min {
			return nil, validationError("Currently, desiredSize equals minSize (%d). Terminating instance without replacement will violate group's min size constraint. Either set shouldDecrementDesiredCapacity flag to false or lower group's min size.", g.min)
		}
		g.desired--
		act.Cause = fmt.Sprintf("At %s instance %s was taken out of service in response to a user request, shrinking the capacity from %d to %d.", isoTime(now), id, from, g.desired)
	} else {
		act.Cause = fmt.Sprintf("At %s instance %s was taken out of service in response to a user request.", isoTime(now), id)
	}
	s.terminate(inst)
	s.reconcile(g)
	return &terminateInstanceInAutoScalingGroupResult{act}, nil
}
