package trigger

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/consul-rehydrate/consul-rehydrate/config"
)

// DescribeImages is the one EC2 call Explainer makes.
type DescribeImages interface {
	DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error)
}

// Explainer says which part of the image filter an image fails, for the log line
// of an image the trigger does not fire for. The decision is the aws provider's
// Images (the handlers' code path); this only explains it afterwards, asking EC2
// the same questions one part at a time: the image by id (does it exist, is it
// available), then with the owners (EC2 resolves "self" and aliases), then with
// the name pattern (EC2's own wildcards), then its tags and deprecation.
func Explainer(c DescribeImages, f config.ImageFilter, now func() time.Time) func(context.Context, string) (string, error) {
	return func(ctx context.Context, id string) (string, error) {
		describe := func(in *ec2.DescribeImagesInput) ([]ec2types.Image, error) {
			in.ImageIds = []string{id}
			in.IncludeDeprecated = aws.Bool(true)
			out, err := c.DescribeImages(ctx, in)
			var ae smithy.APIError
			if errors.As(err, &ae) && ae.ErrorCode() == "InvalidAMIID.NotFound" {
				return nil, nil
			}
			if err != nil {
				return nil, fmt.Errorf("describe image %s: %w", id, err)
			}
			return out.Images, nil
		}
		imgs, err := describe(&ec2.DescribeImagesInput{})
		if err != nil {
			return "", err
		}
		if len(imgs) == 0 {
			return "no such image visible to this account (deregistered, or not shared with it)", nil
		}
		img := imgs[0]
		if img.State != ec2types.ImageStateAvailable {
			return fmt.Sprintf("state \"%s\", not available", cut(string(img.State), maxValue)), nil
		}
		if len(f.Owners) > 0 {
			if imgs, err = describe(&ec2.DescribeImagesInput{Owners: f.Owners}); err != nil {
				return "", err
			}
			if len(imgs) == 0 {
				return fmt.Sprintf("owner %s is not one of the filter's owners [%s]", cut(aws.ToString(img.OwnerId), maxValue), strings.Join(f.Owners, " ")), nil
			}
		}
		if f.NamePattern != "" {
			imgs, err = describe(&ec2.DescribeImagesInput{Filters: []ec2types.Filter{{Name: aws.String("name"), Values: []string{f.NamePattern}}}})
			if err != nil {
				return "", err
			}
			if len(imgs) == 0 {
				return fmt.Sprintf("name \"%s\" does not match the filter's name_pattern \"%s\"", cut(aws.ToString(img.Name), maxValue), f.NamePattern), nil
			}
		}
		have := map[string]string{}
		for _, tg := range img.Tags {
			have[aws.ToString(tg.Key)] = aws.ToString(tg.Value)
		}
		keys := make([]string, 0, len(f.Tags))
		for k := range f.Tags {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			v, ok := have[k]
			switch {
			case !ok:
				return fmt.Sprintf("no tag %s (the filter wants %s = \"%s\"; Packer tags an image after it is available, and the wait is over)", k, k, f.Tags[k]), nil
			case v != f.Tags[k]:
				return fmt.Sprintf("tag %s is \"%s\", the filter wants \"%s\"", k, cut(v, maxValue), f.Tags[k]), nil
			}
		}
		if dep, err := time.Parse(time.RFC3339, aws.ToString(img.DeprecationTime)); err == nil && !dep.After(now()) {
			return "deprecated since " + dep.UTC().Format(time.RFC3339), nil
		}
		return "it matches the filter now, not within the wait: invoke again", nil
	}
}
