package awsfake

import (
	"encoding/base64"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// set is an EC2 list: <xxxSet><item>…</item></xxxSet>.
type set[T any] struct {
	Items []T `xml:"item"`
}

type ec2Tag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

func tagSet(tags map[string]string) *set[ec2Tag] {
	if len(tags) == 0 {
		return nil // EC2 leaves tagSet out when there are no tags
	}
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := &set[ec2Tag]{}
	for _, k := range keys {
		out.Items = append(out.Items, ec2Tag{k, tags[k]})
	}
	return out
}

type xmlImage struct {
	ImageID            string       `xml:"imageId"`
	ImageLocation      string       `xml:"imageLocation"`
	ImageState         string       `xml:"imageState"`
	ImageOwnerID       string       `xml:"imageOwnerId"`
	CreationDate       string       `xml:"creationDate"`
	IsPublic           bool         `xml:"isPublic"`
	Architecture       string       `xml:"architecture"`
	ImageType          string       `xml:"imageType"`
	Name               string       `xml:"name"`
	RootDeviceType     string       `xml:"rootDeviceType"`
	RootDeviceName     string       `xml:"rootDeviceName"`
	VirtualizationType string       `xml:"virtualizationType"`
	Hypervisor         string       `xml:"hypervisor"`
	EnaSupport         bool         `xml:"enaSupport"`
	PlatformDetails    string       `xml:"platformDetails"`
	UsageOperation     string       `xml:"usageOperation"`
	DeprecationTime    string       `xml:"deprecationTime,omitempty"`
	TagSet             *set[ec2Tag] `xml:"tagSet"`
}

type describeImagesResponse struct {
	ec2Meta
	Images set[xmlImage] `xml:"imagesSet"`
}

func (s *Server) describeImages(p url.Values) (any, error) {
	fs := parseFilters(p)
	if err := checkFilters(fs, "name", "state", "image-id", "owner-id", "tag-key"); err != nil {
		return nil, err
	}
	ids := list(p, "ImageId")
	var missing []string
	for _, id := range ids {
		if !validID(id, "ami-") {
			return nil, apiErr(http.StatusBadRequest, "InvalidAMIID.Malformed", `Invalid id: "%s" (expecting "ami-...")`, id)
		}
		if s.image(id) == nil {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		return nil, apiErr(http.StatusBadRequest, "InvalidAMIID.NotFound", "The image id '[%s]' does not exist", strings.Join(missing, ", "))
	}
	owners := list(p, "Owner")
	includeDeprecated := p.Get("IncludeDeprecated") == "true"
	now := time.Now()
	out := &describeImagesResponse{}
	for _, img := range s.images {
		switch {
		case len(ids) > 0 && !slices.Contains(ids, img.ID):
		case len(owners) > 0 && !slices.ContainsFunc(owners, func(o string) bool {
			return o == img.OwnerID || o == "self" && img.OwnerID == s.opts.AccountID
		}):
		case len(ids) == 0 && !includeDeprecated && img.OwnerID != s.opts.AccountID &&
			img.DeprecationTime != nil && !img.DeprecationTime.After(now):
		case !matchFilters(fs, func(name string) []string {
			switch name {
			case "name":
				return []string{img.Name}
			case "state":
				return []string{img.State}
			case "image-id":
				return []string{img.ID}
			case "owner-id":
				return []string{img.OwnerID}
			}
			return tagAttr(img.Tags, name)
		}):
		default:
			x := xmlImage{
				ImageID: img.ID, ImageLocation: img.OwnerID + "/" + img.Name, ImageState: img.State,
				ImageOwnerID: img.OwnerID, CreationDate: isoTime(img.CreationDate), Architecture: "x86_64",
				ImageType: "machine", Name: img.Name, RootDeviceType: "ebs", RootDeviceName: "/dev/xvda",
				VirtualizationType: "hvm", Hypervisor: "xen", EnaSupport: true, PlatformDetails: "Linux/UNIX",
				UsageOperation: "RunInstances", TagSet: tagSet(img.Tags),
			}
			if img.DeprecationTime != nil {
				x.DeprecationTime = isoTime(*img.DeprecationTime)
			}
			out.Images.Items = append(out.Images.Items, x)
		}
	}
	return out, nil
}

type xmlInstanceState struct {
	Code int    `xml:"code"`
	Name string `xml:"name"`
}

type xmlInstance struct {
	InstanceID       string           `xml:"instanceId"`
	ImageID          string           `xml:"imageId"`
	InstanceState    xmlInstanceState `xml:"instanceState"`
	PrivateDNSName   string           `xml:"privateDnsName"`
	DNSName          string           `xml:"dnsName"`
	AmiLaunchIndex   int              `xml:"amiLaunchIndex"`
	InstanceType     string           `xml:"instanceType"`
	LaunchTime       string           `xml:"launchTime"`
	AvailabilityZone string           `xml:"placement>availabilityZone"`
	PrivateIPAddress string           `xml:"privateIpAddress,omitempty"`
	Architecture     string           `xml:"architecture"`
	RootDeviceType   string           `xml:"rootDeviceType"`
	Hypervisor       string           `xml:"hypervisor"`
	TagSet           *set[ec2Tag]     `xml:"tagSet"`
}

type xmlReservation struct {
	ReservationID string           `xml:"reservationId"`
	OwnerID       string           `xml:"ownerId"`
	Instances     set[xmlInstance] `xml:"instancesSet"`
}

type describeInstancesResponse struct {
	ec2Meta
	Reservations set[xmlReservation] `xml:"reservationSet"`
}

// ec2StateCodes are EC2's instance state codes.
var ec2StateCodes = map[string]int{"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48}

func (s *Server) describeInstances(p url.Values) (any, error) {
	fs := parseFilters(p)
	if err := checkFilters(fs, "instance-id", "instance-state-name", "image-id", "private-ip-address", "tag-key"); err != nil {
		return nil, err
	}
	ids := list(p, "InstanceId")
	for _, id := range ids {
		if !validID(id, "i-") {
			return nil, apiErr(http.StatusBadRequest, "InvalidInstanceID.Malformed", `Invalid id: "%s"`, id)
		}
	}
	// A just-created instance is unknown until DescribeLag has passed: "if you
	// run a command to modify or describe the resource that you just created,
	// its ID might not have propagated throughout the system, and you will get
	// an error responding that the resource does not exist … InvalidInstanceID.NotFound
	// … This does not mean the instance does not exist" (EC2 developer guide,
	// "Eventual consistency in the Amazon EC2 API"). Asked for by InstanceId, the
	// whole call fails; a filter (instance-id included) just does not match it.
	now := time.Now()
	var missing []string
	for _, id := range ids {
		if i := s.instances[id]; i == nil || now.Before(i.visible) {
			missing = append(missing, id)
			if i != nil {
				s.lagged++
			}
		}
	}
	switch {
	case len(missing) == 1:
		return nil, apiErr(http.StatusBadRequest, "InvalidInstanceID.NotFound", "The instance ID '%s' does not exist", missing[0])
	case len(missing) > 1:
		return nil, apiErr(http.StatusBadRequest, "InvalidInstanceID.NotFound", "The instance IDs '%s' do not exist", strings.Join(missing, ", "))
	}
	out := &describeInstancesResponse{}
	for _, i := range s.sortedInstances() {
		tags := map[string]string{
			"aws:autoscaling:groupName":     i.group,
			"aws:ec2launchtemplate:id":      i.templateID,
			"aws:ec2launchtemplate:version": strconv.FormatInt(i.templateVersion, 10),
		}
		if len(ids) > 0 && !slices.Contains(ids, i.id) || !matchFilters(fs, func(name string) []string {
			switch name {
			case "instance-id":
				return []string{i.id}
			case "instance-state-name":
				return []string{i.state}
			case "image-id":
				return []string{i.imageID}
			case "private-ip-address":
				return []string{i.ip}
			}
			return tagAttr(tags, name)
		}) {
			continue
		}
		if now.Before(i.visible) {
			s.lagged++ // asked for (by a filter) but not known yet: left out
			continue
		}
		x := xmlInstance{
			InstanceID: i.id, ImageID: i.imageID,
			InstanceState: xmlInstanceState{Code: ec2StateCodes[i.state], Name: i.state},
			InstanceType:  i.instanceType, LaunchTime: isoTime(i.launched), AvailabilityZone: i.az,
			Architecture: "x86_64", RootDeviceType: "ebs", Hypervisor: "xen", TagSet: tagSet(tags),
		}
		if i.state != "terminated" { // a terminated instance has lost its private address
			x.PrivateIPAddress = i.ip
			x.PrivateDNSName = "ip-" + strings.ReplaceAll(i.ip, ".", "-") + ".ec2.internal"
		}
		out.Reservations.Items = append(out.Reservations.Items, xmlReservation{
			ReservationID: i.reservationID, OwnerID: s.opts.AccountID, Instances: set[xmlInstance]{Items: []xmlInstance{x}},
		})
	}
	return out, nil
}

type xmlIamInstanceProfile struct {
	Arn  string `xml:"arn,omitempty"`
	Name string `xml:"name,omitempty"`
}

type xmlTagSpecification struct {
	ResourceType string       `xml:"resourceType"`
	TagSet       *set[ec2Tag] `xml:"tagSet"`
}

type xmlLaunchTemplateData struct {
	ImageID            string                    `xml:"imageId,omitempty"`
	InstanceType       string                    `xml:"instanceType,omitempty"`
	KeyName            string                    `xml:"keyName,omitempty"`
	UserData           string                    `xml:"userData,omitempty"`
	IamInstanceProfile *xmlIamInstanceProfile    `xml:"iamInstanceProfile"`
	SecurityGroupIDs   *set[string]              `xml:"securityGroupIdSet"`
	SecurityGroups     *set[string]              `xml:"securityGroupSet"`
	TagSpecifications  *set[xmlTagSpecification] `xml:"tagSpecificationSet"`
}

type xmlLaunchTemplateVersion struct {
	LaunchTemplateID   string                `xml:"launchTemplateId"`
	LaunchTemplateName string                `xml:"launchTemplateName"`
	VersionNumber      int64                 `xml:"versionNumber"`
	VersionDescription string                `xml:"versionDescription,omitempty"`
	CreateTime         string                `xml:"createTime"`
	CreatedBy          string                `xml:"createdBy"`
	DefaultVersion     bool                  `xml:"defaultVersion"`
	LaunchTemplateData xmlLaunchTemplateData `xml:"launchTemplateData"`
}

// xmlData writes the members of a version's data the fake answers with: the
// ones a launch uses and a provider may copy (image, type, key, user data,
// instance profile, security groups, tag specifications). Other members are
// stored and copied into new versions, but not described.
func xmlData(d map[string]string) xmlLaunchTemplateData {
	x := xmlLaunchTemplateData{ImageID: d["ImageId"], InstanceType: d["InstanceType"], KeyName: d["KeyName"], UserData: d["UserData"]}
	if arn, name := d["IamInstanceProfile.Arn"], d["IamInstanceProfile.Name"]; arn != "" || name != "" {
		x.IamInstanceProfile = &xmlIamInstanceProfile{Arn: arn, Name: name}
	}
	if ids := listMap(d, "SecurityGroupId"); len(ids) > 0 {
		x.SecurityGroupIDs = &set[string]{Items: ids}
	}
	if names := listMap(d, "SecurityGroup"); len(names) > 0 {
		x.SecurityGroups = &set[string]{Items: names}
	}
	for n := 1; d[fmt.Sprintf("TagSpecification.%d.ResourceType", n)] != ""; n++ {
		prefix := fmt.Sprintf("TagSpecification.%d.", n)
		tags := map[string]string{}
		for t := 1; d[fmt.Sprintf("%sTag.%d.Key", prefix, t)] != ""; t++ {
			tags[d[fmt.Sprintf("%sTag.%d.Key", prefix, t)]] = d[fmt.Sprintf("%sTag.%d.Value", prefix, t)]
		}
		if x.TagSpecifications == nil {
			x.TagSpecifications = &set[xmlTagSpecification]{}
		}
		x.TagSpecifications.Items = append(x.TagSpecifications.Items, xmlTagSpecification{ResourceType: d[prefix+"ResourceType"], TagSet: tagSet(tags)})
	}
	return x
}

// listMap reads a flattened list prefix.1, prefix.2, … from a map.
func listMap(d map[string]string, prefix string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := d[prefix+"."+strconv.Itoa(i)]
		if !ok {
			return out
		}
		out = append(out, v)
	}
}

func (s *Server) xmlVersion(lt *launchTemplate, v *ltVersion) xmlLaunchTemplateVersion {
	return xmlLaunchTemplateVersion{
		LaunchTemplateID: lt.id, LaunchTemplateName: lt.name, VersionNumber: v.number,
		VersionDescription: v.description, CreateTime: isoTime(v.created),
		CreatedBy: "arn:aws:iam::" + s.opts.AccountID + ":root", DefaultVersion: v.number == lt.defaultVersion,
		LaunchTemplateData: xmlData(v.data),
	}
}

// findTemplate finds the template a request names by LaunchTemplateName or
// LaunchTemplateId.
func (s *Server) findTemplate(p url.Values) (*launchTemplate, error) {
	name, id := p.Get("LaunchTemplateName"), p.Get("LaunchTemplateId")
	switch {
	case name != "":
		if lt := s.templates[name]; lt != nil {
			return lt, nil
		}
		return nil, apiErr(http.StatusBadRequest, "InvalidLaunchTemplateName.NotFoundException",
			"At least one of the launch templates specified in the request does not exist.")
	case id != "":
		for _, lt := range s.templates {
			if lt.id == id {
				return lt, nil
			}
		}
		return nil, apiErr(http.StatusBadRequest, "InvalidLaunchTemplateId.NotFound",
			"The specified launch template, with template ID %s, does not exist.", id)
	}
	return nil, apiErr(http.StatusBadRequest, "MissingParameter", "The request must contain the parameter LaunchTemplateName or LaunchTemplateId")
}

func versionNotFound(lt *launchTemplate, v string) error {
	return apiErr(http.StatusBadRequest, "InvalidLaunchTemplateId.VersionNotFound",
		"Could not find launch template version %s for launch template %s.", v, lt.id)
}

type createLaunchTemplateVersionResponse struct {
	ec2Meta
	LaunchTemplateVersion xmlLaunchTemplateVersion `xml:"launchTemplateVersion"`
}

// createLaunchTemplateVersion creates a version from the request's
// LaunchTemplateData, on top of a full copy of SourceVersion's when one is
// named: "You can specify a source version … The new version inherits the same
// launch parameters as the source version, except for parameters that you
// specify in LaunchTemplateData" (CreateLaunchTemplateVersionInput.SourceVersion
// and LaunchTemplateData, aws-sdk-go-v2/service/ec2). A top-level member named
// in the request replaces that whole member of the source (the request's
// SecurityGroupId.1 replaces all the source's security group IDs).
//
// ClientToken makes it idempotent: the same token with the same request (every
// parameter) returns the version it created; with another request it is
// IdempotentParameterMismatch (EC2 API reference, "Ensuring idempotency").
func (s *Server) createLaunchTemplateVersion(p url.Values) (any, error) {
	lt, err := s.findTemplate(p)
	if err != nil {
		return nil, err
	}
	token, desc, source := p.Get("ClientToken"), p.Get("VersionDescription"), p.Get("SourceVersion")
	if len(token) > 128 {
		// "Constraint: Maximum 128 ASCII characters" (CreateLaunchTemplateVersionInput.ClientToken).
		return nil, apiErr(http.StatusBadRequest, "InvalidParameterValue", "The client token must be at most 128 characters long.")
	}
	req := canonicalRequest(p)
	if prev, ok := s.tokens[token]; ok && token != "" {
		if prev.request != req {
			return nil, apiErr(http.StatusBadRequest, "IdempotentParameterMismatch",
				"The client token %s was already used with different parameters.", token)
		}
		return &createLaunchTemplateVersionResponse{LaunchTemplateVersion: s.xmlVersion(lt, lt.versions[prev.version-1])}, nil
	}
	if !hasKeyWithPrefix(p, "LaunchTemplateData.") {
		return nil, apiErr(http.StatusBadRequest, "MissingParameter", "The request must contain the parameter LaunchTemplateData")
	}
	v := &ltVersion{number: int64(len(lt.versions)) + 1, description: desc, data: map[string]string{}, created: time.Now()}
	if source != "" {
		src, ok := lt.resolve(source)
		if !ok {
			return nil, versionNotFound(lt, source)
		}
		v.data = maps.Clone(src.data)
	}
	overrides := map[string]string{}
	for k := range p {
		if rest, ok := strings.CutPrefix(k, "LaunchTemplateData."); ok {
			overrides[rest] = p.Get(k)
		}
	}
	for k := range overrides {
		member, _, _ := strings.Cut(k, ".")
		maps.DeleteFunc(v.data, func(old, _ string) bool { m, _, _ := strings.Cut(old, "."); return m == member })
	}
	maps.Copy(v.data, overrides)
	if ami, ok := overrides["ImageId"]; ok {
		if !validID(ami, "ami-") {
			return nil, apiErr(http.StatusBadRequest, "InvalidAMIID.Malformed", `Invalid id: "%s" (expecting "ami-...")`, ami)
		}
		if s.image(ami) == nil {
			return nil, apiErr(http.StatusBadRequest, "InvalidAMIID.NotFound", "The image id '[%s]' does not exist", ami)
		}
	}
	if ud, ok := overrides["UserData"]; ok {
		// "The user data must be base64-encoded" (RequestLaunchTemplateData.UserData).
		if _, err := base64.StdEncoding.DecodeString(ud); err != nil {
			return nil, apiErr(http.StatusBadRequest, "InvalidUserData.Malformed", "Invalid BASE64 encoding of user data.")
		}
	}
	lt.versions = append(lt.versions, v)
	if token != "" {
		s.tokens[token] = tokenUse{request: req, version: v.number}
	}
	return &createLaunchTemplateVersionResponse{LaunchTemplateVersion: s.xmlVersion(lt, v)}, nil
}

// canonicalRequest encodes every parameter of a request but Action and Version
// (the SDK's per-attempt headers are not parameters), in key order.
func canonicalRequest(p url.Values) string {
	q := cloneValues(p)
	q.Del("Action")
	q.Del("Version")
	return q.Encode()
}

type describeLaunchTemplateVersionsResponse struct {
	ec2Meta
	Versions set[xmlLaunchTemplateVersion] `xml:"launchTemplateVersionSet"`
}

func (s *Server) describeLaunchTemplateVersions(p url.Values) (any, error) {
	lt, err := s.findTemplate(p)
	if err != nil {
		return nil, err
	}
	want := list(p, "LaunchTemplateVersion")
	var vs []*ltVersion
	if len(want) == 0 {
		vs = lt.versions
	}
	for _, w := range want {
		v, ok := lt.resolve(w)
		if !ok || w == "" {
			return nil, versionNotFound(lt, w)
		}
		if !slices.Contains(vs, v) {
			vs = append(vs, v)
		}
	}
	out := &describeLaunchTemplateVersionsResponse{}
	for _, v := range vs {
		out.Versions.Items = append(out.Versions.Items, s.xmlVersion(lt, v))
	}
	return out, nil
}

func hasKeyWithPrefix(p url.Values, prefix string) bool {
	for k := range p {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}
