package awsfake_test

import (
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/test/awsfake"
)

func filter(name string, values ...string) ec2types.Filter {
	return ec2types.Filter{Name: aws.String(name), Values: values}
}

func imageIDs(out *ec2.DescribeImagesOutput) []string {
	var ids []string
	for _, img := range out.Images {
		ids = append(ids, aws.ToString(img.ImageId))
	}
	return ids
}

func TestDescribeImages_DecodesEveryFieldTheProviderReads(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{})
	created := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	deprecates := created.Add(100 * 365 * 24 * time.Hour)
	srv.AddImage(awsfake.Image{
		ID: amiOld, Name: "consul-1.20.0", OwnerID: "099720109477", CreationDate: created,
		DeprecationTime: &deprecates, Tags: map[string]string{"Role": "consul", "Env": "prod"},
	})

	out, err := e.DescribeImages(ctx(t), &ec2.DescribeImagesInput{Owners: []string{"099720109477"}})
	require.NoError(t, err)
	require.Len(t, out.Images, 1)
	img := out.Images[0]
	assert.Equal(t, amiOld, aws.ToString(img.ImageId))
	assert.Equal(t, "consul-1.20.0", aws.ToString(img.Name))
	assert.Equal(t, "099720109477", aws.ToString(img.OwnerId))
	assert.Equal(t, "2024-01-02T03:04:05.000Z", aws.ToString(img.CreationDate))
	assert.Equal(t, deprecates.Format("2006-01-02T15:04:05.000Z"), aws.ToString(img.DeprecationTime))
	assert.Equal(t, ec2types.ImageStateAvailable, img.State)
	assert.Equal(t, []ec2types.Tag{
		{Key: aws.String("Env"), Value: aws.String("prod")},
		{Key: aws.String("Role"), Value: aws.String("consul")},
	}, img.Tags)
}

func TestDescribeImages_FiltersByNameWildcardsStateTagsAndID(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{})
	consul := map[string]string{"Role": "consul"}
	srv.AddImage(awsfake.Image{ID: "ami-1", Name: "consul-1.20.0-amd64", Tags: consul})
	srv.AddImage(awsfake.Image{ID: "ami-2", Name: "consul-1.21.0-amd64", Tags: consul})
	srv.AddImage(awsfake.Image{ID: "ami-3", Name: "consul-1.21.0-arm64", Tags: map[string]string{"Role": "other"}})
	srv.AddImage(awsfake.Image{ID: "ami-4", Name: "consul-1.22.0-amd64", State: "pending", Tags: consul})
	srv.AddImage(awsfake.Image{ID: "ami-5", Name: "vault-1.0", Tags: consul})
	srv.AddImage(awsfake.Image{ID: "ami-6", Name: "consul*", Tags: map[string]string{"Team": ""}})

	for _, tc := range []struct {
		name    string
		filters []ec2types.Filter
		want    []string
	}{
		{"star matches any run", []ec2types.Filter{filter("name", "consul-*-amd64")}, []string{"ami-1", "ami-2", "ami-4"}},
		{"question mark matches one character", []ec2types.Filter{filter("name", "consul-1.2?.0-amd64")}, []string{"ami-1", "ami-2", "ami-4"}},
		{"no wildcard is exact", []ec2types.Filter{filter("name", "consul-1.21.0")}, nil},
		{"escaped star is literal", []ec2types.Filter{filter("name", `consul\*`)}, []string{"ami-6"}},
		{"filters are ANDed", []ec2types.Filter{filter("name", "consul-*-amd64"), filter("state", "available")}, []string{"ami-1", "ami-2"}},
		{"values are ORed", []ec2types.Filter{filter("name", "vault-*", "consul-1.20*")}, []string{"ami-1", "ami-5"}},
		{"tag value", []ec2types.Filter{filter("tag:Role", "consul"), filter("state", "available")}, []string{"ami-1", "ami-2", "ami-5"}},
		{"tag value wildcard", []ec2types.Filter{filter("tag:Role", "o*")}, []string{"ami-3"}},
		{"tag key", []ec2types.Filter{filter("tag-key", "Team")}, []string{"ami-6"}},
		{"image id", []ec2types.Filter{filter("image-id", "ami-2", "ami-3")}, []string{"ami-2", "ami-3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := e.DescribeImages(ctx(t), &ec2.DescribeImagesInput{Owners: []string{"self"}, Filters: tc.filters})
			require.NoError(t, err)
			assert.Equal(t, tc.want, imageIDs(out))
		})
	}
}

func TestDescribeImages_OwnersRestrictAndSelfMeansTheAccount(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{AccountID: "111111111111"})
	srv.AddImage(awsfake.Image{ID: "ami-mine", Name: "a"})
	srv.AddImage(awsfake.Image{ID: "ami-theirs", Name: "b", OwnerID: "222222222222"})

	for owners, want := range map[string][]string{
		"self":         {"ami-mine"},
		"111111111111": {"ami-mine"},
		"222222222222": {"ami-theirs"},
		"":             {"ami-mine", "ami-theirs"},
	} {
		in := &ec2.DescribeImagesInput{}
		if owners != "" {
			in.Owners = []string{owners}
		}
		out, err := e.DescribeImages(ctx(t), in)
		require.NoError(t, err)
		assert.Equal(t, want, imageIDs(out), "owners %q", owners)
	}
}

func TestDescribeImages_HidesOthersDeprecatedImagesUnlessIncludedOrAskedByID(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{})
	past := time.Now().Add(-time.Hour)
	srv.AddImage(awsfake.Image{ID: "ami-mine", Name: "a", DeprecationTime: &past})
	srv.AddImage(awsfake.Image{ID: "ami-theirs", Name: "b", OwnerID: "222222222222", DeprecationTime: &past})

	out, err := e.DescribeImages(ctx(t), &ec2.DescribeImagesInput{})
	require.NoError(t, err)
	assert.Equal(t, []string{"ami-mine"}, imageIDs(out), "an owner always sees its deprecated images")

	out, err = e.DescribeImages(ctx(t), &ec2.DescribeImagesInput{IncludeDeprecated: aws.Bool(true)})
	require.NoError(t, err)
	assert.Equal(t, []string{"ami-mine", "ami-theirs"}, imageIDs(out))

	out, err = e.DescribeImages(ctx(t), &ec2.DescribeImagesInput{ImageIds: []string{"ami-theirs"}})
	require.NoError(t, err)
	assert.Equal(t, []string{"ami-theirs"}, imageIDs(out))
}

// TestDescribeImages_ImagesDeprecatedOrUntaggedLaterLeaveTheListing: what an
// operator does to pull a bad AMI, after the fact.
func TestDescribeImages_ImagesDeprecatedOrUntaggedLaterLeaveTheListing(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{AccountID: "111111111111"})
	srv.AddImage(awsfake.Image{ID: "ami-mine", Name: "a", Tags: map[string]string{"Role": "consul"}})
	srv.AddImage(awsfake.Image{ID: "ami-theirs", Name: "b", OwnerID: "222222222222", Tags: map[string]string{"Role": "consul"}})
	describe := func(in *ec2.DescribeImagesInput) []string {
		out, err := e.DescribeImages(ctx(t), in)
		require.NoError(t, err)
		return imageIDs(out)
	}
	byTag := &ec2.DescribeImagesInput{Filters: []ec2types.Filter{{Name: aws.String("tag:Role"), Values: []string{"consul"}}}}
	require.Equal(t, []string{"ami-mine", "ami-theirs"}, describe(byTag))

	past := time.Now().Add(-time.Minute)
	srv.DeprecateImage("ami-mine", &past)
	srv.DeprecateImage("ami-theirs", &past)
	out, err := e.DescribeImages(ctx(t), byTag)
	require.NoError(t, err)
	assert.Equal(t, []string{"ami-mine"}, imageIDs(out), "only the owner still sees a deprecated image")
	assert.Equal(t, past.UTC().Format("2006-01-02T15:04:05.000Z"), aws.ToString(out.Images[0].DeprecationTime), "with its deprecation time")
	assert.Equal(t, []string{"ami-theirs"}, describe(&ec2.DescribeImagesInput{ImageIds: []string{"ami-theirs"}}), "asked for by ID")

	srv.DeprecateImage("ami-theirs", nil)
	assert.Equal(t, []string{"ami-mine", "ami-theirs"}, describe(byTag), "deprecation disabled")

	srv.SetImageTags("ami-mine", nil)
	assert.Equal(t, []string{"ami-theirs"}, describe(byTag), "untagged: the tag filter no longer matches")
	assert.Equal(t, []string{"ami-mine", "ami-theirs"}, describe(&ec2.DescribeImagesInput{}), "still there")

	assert.Panics(t, func() { srv.DeprecateImage("ami-0404", nil) })
	assert.Panics(t, func() { srv.SetImageTags("ami-0404", nil) })
}

func TestDescribeImages_UnknownMalformedIDsAndFiltersAreErrors(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{})
	srv.AddImage(awsfake.Image{ID: amiOld})

	_, err := e.DescribeImages(ctx(t), &ec2.DescribeImagesInput{ImageIds: []string{amiOld, "ami-0404"}})
	code, msg := apiCode(t, err)
	assert.Equal(t, "InvalidAMIID.NotFound", code)
	assert.Equal(t, "The image id '[ami-0404]' does not exist", msg)

	_, err = e.DescribeImages(ctx(t), &ec2.DescribeImagesInput{ImageIds: []string{"consul"}})
	code, _ = apiCode(t, err)
	assert.Equal(t, "InvalidAMIID.Malformed", code)

	_, err = e.DescribeImages(ctx(t), &ec2.DescribeImagesInput{Filters: []ec2types.Filter{filter("colour", "blue")}})
	code, msg = apiCode(t, err)
	assert.Equal(t, "InvalidParameterValue", code)
	assert.Equal(t, "The filter 'colour' is invalid", msg)
}

func TestDescribeInstances_DecodesStateIPImageLaunchTimeAndGroupTags(t *testing.T) {
	srv, e, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 2, 2, 2)
	g := waitInService(t, a, "consul", 2)
	ids := []string{aws.ToString(g.Instances[0].InstanceId), aws.ToString(g.Instances[1].InstanceId)}

	out, err := e.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{InstanceIds: ids})
	require.NoError(t, err)
	require.Len(t, out.Reservations, 2)
	for _, r := range out.Reservations {
		assert.True(t, strings.HasPrefix(aws.ToString(r.ReservationId), "r-"))
		require.Len(t, r.Instances, 1)
		i := r.Instances[0]
		assert.Contains(t, ids, aws.ToString(i.InstanceId))
		assert.Regexp(t, `^i-[0-9a-f]{17}$`, aws.ToString(i.InstanceId))
		assert.Equal(t, amiOld, aws.ToString(i.ImageId))
		assert.Regexp(t, `^192\.0\.2\.\d+$`, aws.ToString(i.PrivateIpAddress))
		assert.WithinDuration(t, time.Now(), aws.ToTime(i.LaunchTime), time.Minute)
		require.NotNil(t, i.State)
		assert.Equal(t, ec2types.InstanceStateNameRunning, i.State.Name)
		assert.Equal(t, int32(16), aws.ToInt32(i.State.Code))
		tags := map[string]string{}
		for _, tag := range i.Tags {
			tags[aws.ToString(tag.Key)] = aws.ToString(tag.Value)
		}
		assert.Equal(t, "consul", tags["aws:autoscaling:groupName"])
		assert.Equal(t, "1", tags["aws:ec2launchtemplate:version"])
	}

	out, err = e.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{
		Filters: []ec2types.Filter{filter("instance-state-name", "running"), filter("instance-id", ids[0])},
	})
	require.NoError(t, err)
	require.Len(t, out.Reservations, 1)
	assert.Equal(t, ids[0], aws.ToString(out.Reservations[0].Instances[0].InstanceId))
}

func TestDescribeInstances_UnknownIDIsInvalidInstanceIDNotFound(t *testing.T) {
	_, e, _ := newFake(t, awsfake.Options{})
	_, err := e.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{InstanceIds: []string{"i-0123456789abcdef0"}})
	code, msg := apiCode(t, err)
	assert.Equal(t, "InvalidInstanceID.NotFound", code)
	assert.Equal(t, "The instance ID 'i-0123456789abcdef0' does not exist", msg)

	_, err = e.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{InstanceIds: []string{"server-1"}})
	code, _ = apiCode(t, err)
	assert.Equal(t, "InvalidInstanceID.Malformed", code)
}

func TestCreateLaunchTemplateVersion_CopiesTheSourceVersionAndSetsTheImage(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{})
	srv.AddImage(awsfake.Image{ID: amiOld})
	srv.AddImage(awsfake.Image{ID: amiNew})
	ltID := srv.AddLaunchTemplate("consul", amiOld)

	out, err := e.CreateLaunchTemplateVersion(ctx(t), &ec2.CreateLaunchTemplateVersionInput{
		LaunchTemplateName: aws.String("consul"), SourceVersion: aws.String("$Latest"),
		VersionDescription: aws.String("roll-1/launch"), ClientToken: aws.String("roll-1-launch"),
		LaunchTemplateData: &ec2types.RequestLaunchTemplateData{ImageId: aws.String(amiNew)},
	})
	require.NoError(t, err)
	v := out.LaunchTemplateVersion
	require.NotNil(t, v)
	assert.Equal(t, int64(2), aws.ToInt64(v.VersionNumber))
	assert.Equal(t, "roll-1/launch", aws.ToString(v.VersionDescription))
	assert.Equal(t, "consul", aws.ToString(v.LaunchTemplateName))
	assert.Equal(t, ltID, aws.ToString(v.LaunchTemplateId))
	assert.False(t, aws.ToBool(v.DefaultVersion))
	assert.WithinDuration(t, time.Now(), aws.ToTime(v.CreateTime), time.Minute)
	require.NotNil(t, v.LaunchTemplateData)
	assert.Equal(t, amiNew, aws.ToString(v.LaunchTemplateData.ImageId))
	assert.Equal(t, ec2types.InstanceType("t3.micro"), v.LaunchTemplateData.InstanceType, "copied from the source")
}

func TestCreateLaunchTemplateVersion_TheSameClientTokenReturnsTheSameVersion(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{})
	srv.AddImage(awsfake.Image{ID: amiOld})
	srv.AddImage(awsfake.Image{ID: amiNew})
	srv.AddLaunchTemplate("consul", amiOld)
	create := func(token, ami string) (int64, error) {
		out, err := e.CreateLaunchTemplateVersion(ctx(t), &ec2.CreateLaunchTemplateVersionInput{
			LaunchTemplateName: aws.String("consul"), SourceVersion: aws.String("1"), VersionDescription: aws.String("d"),
			ClientToken: aws.String(token), LaunchTemplateData: &ec2types.RequestLaunchTemplateData{ImageId: aws.String(ami)},
		})
		if err != nil {
			return 0, err
		}
		return aws.ToInt64(out.LaunchTemplateVersion.VersionNumber), nil
	}

	first, err := create("token-a", amiNew)
	require.NoError(t, err)
	again, err := create("token-a", amiNew)
	require.NoError(t, err)
	assert.Equal(t, first, again)
	other, err := create("token-b", amiNew)
	require.NoError(t, err)
	assert.Equal(t, first+1, other)

	_, err = create("token-a", amiOld)
	code, _ := apiCode(t, err)
	assert.Equal(t, "IdempotentParameterMismatch", code)

	out, err := e.DescribeLaunchTemplateVersions(ctx(t), &ec2.DescribeLaunchTemplateVersionsInput{LaunchTemplateName: aws.String("consul")})
	require.NoError(t, err)
	assert.Len(t, out.LaunchTemplateVersions, 3, "versions 1, token-a's and token-b's")
}

func TestCreateLaunchTemplateVersion_UnknownTemplateImageOrSourceAreErrors(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{})
	srv.AddImage(awsfake.Image{ID: amiOld})
	srv.AddLaunchTemplate("consul", amiOld)
	for _, tc := range []struct {
		name, template, source, ami, code string
	}{
		{"unknown template", "nomad", "", amiOld, "InvalidLaunchTemplateName.NotFoundException"},
		{"unknown image", "consul", "", "ami-0404", "InvalidAMIID.NotFound"},
		{"malformed image", "consul", "", "consul-1.21", "InvalidAMIID.Malformed"},
		{"unknown source version", "consul", "7", amiOld, "InvalidLaunchTemplateId.VersionNotFound"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := &ec2.CreateLaunchTemplateVersionInput{
				LaunchTemplateName: aws.String(tc.template),
				LaunchTemplateData: &ec2types.RequestLaunchTemplateData{ImageId: aws.String(tc.ami)},
			}
			if tc.source != "" {
				in.SourceVersion = aws.String(tc.source)
			}
			_, err := e.CreateLaunchTemplateVersion(ctx(t), in)
			code, _ := apiCode(t, err)
			assert.Equal(t, tc.code, code)
		})
	}
}

func TestDescribeLaunchTemplateVersions_ResolvesLatestDefaultAndNumbers(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{})
	srv.AddImage(awsfake.Image{ID: amiOld})
	srv.AddImage(awsfake.Image{ID: amiNew})
	srv.AddLaunchTemplate("consul", amiOld)
	_, err := e.CreateLaunchTemplateVersion(ctx(t), &ec2.CreateLaunchTemplateVersionInput{
		LaunchTemplateName: aws.String("consul"), SourceVersion: aws.String("$Default"), VersionDescription: aws.String("v2"),
		LaunchTemplateData: &ec2types.RequestLaunchTemplateData{ImageId: aws.String(amiNew)},
	})
	require.NoError(t, err)

	describe := func(versions ...string) []ec2types.LaunchTemplateVersion {
		out, err := e.DescribeLaunchTemplateVersions(ctx(t), &ec2.DescribeLaunchTemplateVersionsInput{
			LaunchTemplateName: aws.String("consul"), Versions: versions,
		})
		require.NoError(t, err)
		return out.LaunchTemplateVersions
	}
	latest := describe("$Latest")
	require.Len(t, latest, 1)
	assert.Equal(t, int64(2), aws.ToInt64(latest[0].VersionNumber))
	assert.Equal(t, "v2", aws.ToString(latest[0].VersionDescription))
	assert.Equal(t, amiNew, aws.ToString(latest[0].LaunchTemplateData.ImageId))
	assert.False(t, aws.ToBool(latest[0].DefaultVersion))

	def := describe("$Default")
	require.Len(t, def, 1)
	assert.Equal(t, int64(1), aws.ToInt64(def[0].VersionNumber))
	assert.True(t, aws.ToBool(def[0].DefaultVersion))
	assert.Equal(t, amiOld, aws.ToString(def[0].LaunchTemplateData.ImageId))

	assert.Len(t, describe("1", "2"), 2)
	assert.Len(t, describe(), 2, "no versions named: all of them")

	_, err = e.DescribeLaunchTemplateVersions(ctx(t), &ec2.DescribeLaunchTemplateVersionsInput{
		LaunchTemplateName: aws.String("consul"), Versions: []string{"7"},
	})
	code, _ := apiCode(t, err)
	assert.Equal(t, "InvalidLaunchTemplateId.VersionNotFound", code)

	_, err = e.DescribeLaunchTemplateVersions(ctx(t), &ec2.DescribeLaunchTemplateVersionsInput{LaunchTemplateName: aws.String("nomad")})
	code, _ = apiCode(t, err)
	assert.Equal(t, "InvalidLaunchTemplateName.NotFoundException", code)
}
