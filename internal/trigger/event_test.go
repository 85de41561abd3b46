package trigger

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func event(detailType, source, detail string) string {
	return `{"version":"0","id":"a","detail-type":"` + detailType + `","source":"` + source +
		`","account":"123456789012","time":"2026-11-29T12:00:00Z","region":"us-east-1","resources":[],"detail":` + detail + `}`
}

func ami(id, state string) string {
	return event("EC2 AMI State Change", "aws.ec2", `{"RequestId":"r","ImageId":"`+id+`","State":"`+state+`","ErrorMessage":""}`)
}

// decodeCases is TestDecode's table, and FuzzDecode's seeds.
var decodeCases = []struct {
	name, in, kind, image, why string
}{
	{"available", ami("ami-0123456789abcdef0", "available"), KindImage, "ami-0123456789abcdef0", ""},
	{"short id", ami("ami-01234567", "available"), KindImage, "ami-01234567", ""},
	{"failed", ami("ami-0123456789abcdef0", "failed"), KindIgnored, "", `"failed", not available`},
	{"deregistered", ami("ami-0123456789abcdef0", "deregistered"), KindIgnored, "", "not available"},
	{"schedule input", ` {} `, KindNewest, "", ""},
	{"scheduled rule", event("Scheduled Event", "aws.events", `{}`), KindNewest, "", ""},
	{"another type", event("EC2 Instance State-change Notification", "aws.ec2", `{}`), KindIgnored, "", "not an EC2 AMI State Change"},
	{"another source", event("EC2 AMI State Change", "custom.source", `{}`), KindIgnored, "", "not an EC2 AMI State Change"},
	{"forged id", ami("ami-0123; rm -rf /", "available"), KindRejected, "", "not ami- and 8 or 17 hex digits"},
	{"uppercase id", ami("ami-0123456789ABCDEF0", "available"), KindRejected, "", "not ami-"},
	{"control characters named safely", ami(`ami-\u001b[2J`, "available"), KindRejected, "", `ami-\x1b[2J`},
	{"unknown envelope field", strings.Replace(ami("ami-01234567", "available"), `"version"`, `"extra":1,"version"`, 1), KindRejected, "", "unknown field"},
	{"unknown detail field", event("EC2 AMI State Change", "aws.ec2", `{"ImageId":"ami-01234567","State":"available","Extra":1}`), KindRejected, "", "unknown field"},
	{"trailing data", ami("ami-01234567", "available") + `{}`, KindRejected, "", "data after"},
	{"not JSON", `{"detail":`, KindRejected, "", "not an EventBridge event"},
	{"an array", `[]`, KindRejected, "", "not an EventBridge event"},
	{"too large", `{"x":"` + strings.Repeat("a", MaxEvent) + `"}`, KindRejected, "", "larger than 256 KB"},
	{"long unknown key, cut", `{"` + strings.Repeat("a", 1000) + `":1}`, KindRejected, "", "unknown field"},
	{"long unknown detail key, cut", event("EC2 AMI State Change", "aws.ec2", `{"`+strings.Repeat("a", 1000)+`":1}`), KindRejected, "", "unknown field"},
	{"case-variant envelope key", strings.Replace(ami("ami-01234567", "available"), `"source"`, `"Source"`, 1), KindRejected, "", `key "Source": the field is "source"`},
	{"case-variant key shadowing the real one", strings.Replace(ami("ami-01234567", "available"), `"version"`, `"SOURCE":"aws.ec2","version"`, 1), KindRejected, "", `key "SOURCE"`},
	{"case-variant detail key", event("EC2 AMI State Change", "aws.ec2", `{"imageid":"ami-01234567","State":"available"}`), KindRejected, "", `key "imageid": the field is "ImageId"`},
	{"duplicate envelope key", strings.Replace(ami("ami-01234567", "failed"), `"version"`, `"detail":{"ImageId":"ami-01234567","State":"available"},"version"`, 1), KindRejected, "", `key "detail" given twice`},
	{"duplicate detail key", event("EC2 AMI State Change", "aws.ec2", `{"ImageId":"ami-01234567","State":"failed","State":"available"}`), KindRejected, "", `key "State" given twice`},
	{"duplicate key deeper down", event("Scheduled Event", "aws.events", `{"a":{"b":1,"b":2}}`), KindRejected, "", `key "b" given twice`},
	{"null", `null`, KindRejected, "", "want a JSON object, got null"},
	{"a null field is an empty one", strings.Replace(ami("ami-01234567", "available"), `"region":"us-east-1"`, `"region":null`, 1), KindImage, "ami-01234567", ""},
	{"null detail", event("EC2 AMI State Change", "aws.ec2", `null`), KindRejected, "", "malformed detail: want a JSON object, got null"},
	{"a null ErrorMessage, where AWS documents \"\"", event("EC2 AMI State Change", "aws.ec2", `{"ImageId":"ami-01234567","State":"available","ErrorMessage":null}`), KindImage, "ami-01234567", ""},
	{"a string", `"{}"`, KindRejected, "", "got a string"},
	{"too deep", event("Scheduled Event", "aws.events", strings.Repeat("[", 20)+strings.Repeat("]", 20)), KindRejected, "", "nested deeper than 8"},
}

// maxWhy bounds a reason: a log line's worth.
const maxWhy = 400

func TestDecode(t *testing.T) {
	for _, tc := range decodeCases {
		t.Run(tc.name, func(t *testing.T) {
			r := Decode([]byte(tc.in))
			assert.Equal(t, tc.kind, r.Kind, r.Why)
			if tc.image != "" {
				assert.Equal(t, tc.image, r.Image)
			}
			assert.Contains(t, r.Why, tc.why)
			assert.LessOrEqual(t, len(r.Why), maxWhy, "a reason a log line can hold")
		})
	}
}

// The sample events the EventBridge rule's pattern is tested with
// (test/validate/testdata) decode as the rule means them.
func TestDecode_TheRulesSampleEvents(t *testing.T) {
	for file, kind := range map[string]string{
		"ami-state-change-available.json":    KindImage,
		"ami-state-change-failed.json":       KindIgnored,
		"ami-state-change-deregistered.json": KindIgnored,
		"instance-state-change.json":         KindIgnored,
	} {
		b, err := os.ReadFile("../../test/validate/testdata/" + file)
		if !assert.NoError(t, err) {
			continue
		}
		assert.Equal(t, kind, Decode(b).Kind, file)
	}
}

// FuzzDecode: any payload is decoded without a panic into one of the kinds, an
// image only when it is a well-formed AMI id, and a reason a log line can hold.
func FuzzDecode(f *testing.F) {
	for _, tc := range decodeCases {
		f.Add([]byte(tc.in))
	}
	samples, err := filepath.Glob("../../test/validate/testdata/*.json")
	if err != nil || len(samples) == 0 {
		f.Fatalf("the rule's sample events: %v", err)
	}
	for _, file := range samples {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"` + strings.Repeat("a", 1000) + `":1}`))
	f.Add([]byte(`{"` + strings.Repeat("\\u001b", 300) + `":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := Decode(b)
		switch r.Kind {
		case KindImage:
			if !amiID.MatchString(r.Image) {
				t.Fatalf("image %q from %q", r.Image, b)
			}
		case KindNewest, KindIgnored, KindRejected:
		default:
			t.Fatalf("kind %q", r.Kind)
		}
		if len(r.Why) > maxWhy {
			t.Fatalf("reason of %d bytes", len(r.Why))
		}
		for _, c := range r.Why {
			if c < 0x20 || c == 0x7f {
				t.Fatalf("control character in %q", r.Why)
			}
		}
	})
}
