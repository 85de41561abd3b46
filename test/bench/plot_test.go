package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/consul-rehydrate/consul-rehydrate/internal/workload"
)

// The picture is an SVG with every operation, the failed ones and the steps in it.
func TestPlotRoll_WritesAnSVGWithStepsAndFailures(t *testing.T) {
	start := time.Now()
	r := &Roll{Case: "test", start: start, History: []Step{
		{AtSeconds: 0.1, Step: "launch", Instance: "i-0123456789abcdef0"},
		{AtSeconds: 0.3, Step: "in service", Instance: "i-0123456789abcdef0"},
		{AtSeconds: 10.4, Step: "terminate", Instance: "i-00000000000000001"},
	}}
	for i := range 300 {
		s := workload.Sample{Kind: []string{"write", "read", "cas"}[i%3], Start: start.Add(time.Duration(i-100) * 50 * time.Millisecond), Took: time.Duration(1+i%40) * time.Millisecond}
		if i == 250 {
			s.Failed, s.Took = true, 15*time.Second
		}
		r.samples = append(r.samples, s)
	}
	path := filepath.Join(t.TempDir(), "p.svg")
	if err := plotRoll(r, "A test roll", path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	svg := string(b)
	for _, want := range []string{"<svg", "A test roll", "failed (1)", "terminate", "…00001"} {
		if !strings.Contains(svg, want) {
			t.Errorf("the SVG has no %q", want)
		}
	}
}
