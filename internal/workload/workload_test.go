package workload

import (
	"testing"
	"time"
)

func TestSummarize_NearestRankRoundedDown(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	got := Summarize(d)
	want := Percentiles{N: 100, P50: 51 * time.Millisecond, P95: 96 * time.Millisecond, P99: 100 * time.Millisecond, Max: 100 * time.Millisecond}
	if got != want {
		t.Fatalf("Summarize(1..100ms) = %+v, want %+v", got, want)
	}
	if got := Summarize(nil); got != (Percentiles{}) {
		t.Fatalf("Summarize(nil) = %+v, want zero", got)
	}
	if got := Summarize([]time.Duration{time.Second}); got.P50 != time.Second || got.P99 != time.Second || got.Max != time.Second {
		t.Fatalf("Summarize(1s) = %+v", got)
	}
}
