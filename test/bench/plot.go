package main

import (
	"fmt"
	"image/color"
	"math"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// The pictures share their y axis, so that one glance compares them.
const (
	plotYMinMS = 1
	// Above the longest failed operation (3 attempts of 5 s): the band above holds
	// the legend and the steps' labels.
	plotYMaxMS = 100_000
)

var (
	colWrite  = color.NRGBA{R: 31, G: 119, B: 180, A: 170}
	colRead   = color.NRGBA{R: 44, G: 160, B: 44, A: 170}
	colCAS    = color.NRGBA{R: 148, G: 103, B: 189, A: 170}
	colFailed = color.NRGBA{R: 214, G: 39, B: 40, A: 255}
	colStep   = color.NRGBA{R: 80, G: 80, B: 80, A: 255}
)

// plotRoll draws every operation of r's load, its latency against its start in
// seconds since the roll started, failed ones as red crosses, and the roll's steps
// as labelled vertical lines, as an SVG at path.
func plotRoll(r *Roll, title, path string) error {
	p := plot.New()
	// The y axis has no label: gonum centres a label's room at the mean of the range
	// in data units, near the top on a log scale, and would squash the plot under it.
	p.Title.Text = title + ": each operation's time, all attempts (ms, log scale)"
	p.X.Label.Text = "seconds since the roll started (when the operation started)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())

	pts := map[string]plotter.XYs{}
	var failed plotter.XYs
	xMax := 0.0
	for _, s := range r.samples {
		x := s.Start.Sub(r.start).Seconds()
		y := math.Min(math.Max(float64(s.Took.Microseconds())/1000, plotYMinMS), plotYMaxMS)
		xMax = math.Max(xMax, x)
		if s.Failed {
			failed = append(failed, plotter.XY{X: x, Y: y})
			continue
		}
		pts[s.Kind] = append(pts[s.Kind], plotter.XY{X: x, Y: y})
	}
	for _, k := range []struct {
		kind, label string
		col         color.Color
		shape       draw.GlyphDrawer
	}{
		{"write", "write", colWrite, draw.CircleGlyph{}},
		{"read", "consistent read", colRead, draw.CircleGlyph{}},
		{"cas", "check-and-set", colCAS, draw.TriangleGlyph{}},
	} {
		if len(pts[k.kind]) == 0 {
			continue
		}
		sc, err := plotter.NewScatter(pts[k.kind])
		if err != nil {
			return err
		}
		sc.GlyphStyle = draw.GlyphStyle{Color: k.col, Radius: vg.Points(1.3), Shape: k.shape}
		p.Add(sc)
		p.Legend.Add(fmt.Sprintf("%s (%d)", k.label, len(pts[k.kind])), sc)
	}
	// The failed ones above every other dot.
	if len(failed) > 0 {
		sc, err := plotter.NewScatter(failed)
		if err != nil {
			return err
		}
		sc.GlyphStyle = draw.GlyphStyle{Color: colFailed, Radius: vg.Points(3), Shape: draw.CrossGlyph{}}
		p.Add(sc)
		p.Legend.Add(fmt.Sprintf("failed (%d)", len(failed)), sc)
	}
	// The bound on our roll's slowest operation.
	bound, err := plotter.NewLine(plotter.XYs{{X: -warmUp.Seconds(), Y: maxLatencyMS}, {X: 1e6, Y: maxLatencyMS}})
	if err != nil {
		return err
	}
	bound.LineStyle = draw.LineStyle{Color: colFailed, Width: vg.Points(0.5), Dashes: []vg.Length{vg.Points(1), vg.Points(2)}}
	p.Add(bound)
	p.Legend.Add(fmt.Sprintf("%.0f ms: our target's bound", maxLatencyMS), bound)
	// The steps: one line per second or so, its steps' names joined.
	type mark struct {
		x      float64
		labels []string
	}
	var marks []mark
	for _, h := range r.History {
		l := h.Step
		if h.Instance != "" {
			l += " " + shortID(h.Instance)
		}
		if n := len(marks); n > 0 && h.AtSeconds-marks[n-1].x < 1 {
			marks[n-1].labels = append(marks[n-1].labels, l)
			continue
		}
		marks = append(marks, mark{x: h.AtSeconds, labels: []string{l}})
	}
	style := p.X.Tick.Label
	style.Rotation, style.XAlign, style.YAlign = -math.Pi/2, text.XLeft, text.YBottom
	style.Font.Size, style.Color = vg.Points(7), colStep
	labels := stepLabels{style: style}
	for _, m := range marks {
		ln, err := plotter.NewLine(plotter.XYs{{X: m.x, Y: plotYMinMS}, {X: m.x, Y: plotYMaxMS}})
		if err != nil {
			return err
		}
		ln.LineStyle = draw.LineStyle{Color: colStep, Width: vg.Points(0.6), Dashes: []vg.Length{vg.Points(3), vg.Points(2)}}
		p.Add(ln)
		labels.x = append(labels.x, m.x)
		labels.text = append(labels.text, strings.Join(m.labels, ", "))
		xMax = math.Max(xMax, m.x)
	}
	p.Add(labels)
	p.Legend.Top = true
	p.Legend.TextStyle.Font.Size = vg.Points(7)
	// After Add, which widens the axes to the data.
	p.X.Min, p.X.Max = -warmUp.Seconds(), math.Ceil(xMax+1)
	p.Y.Min, p.Y.Max = plotYMinMS, plotYMaxMS
	return p.Save(26*vg.Centimeter, 13*vg.Centimeter, path)
}

// stepLabels writes each step's label beside its line, from the top of the data
// area down. A plotter of its own rather than plotter.Labels, whose glyph boxes do
// not follow the rotation and would shrink the plot to make room for it.
type stepLabels struct {
	x     []float64
	text  []string
	style text.Style
}

func (l stepLabels) Plot(c draw.Canvas, p *plot.Plot) {
	trX, _ := p.Transforms(&c)
	for i, x := range l.x {
		c.FillText(l.style, vg.Point{X: trX(x) + vg.Points(1.5), Y: c.Max.Y - vg.Points(2)}, l.text[i])
	}
}

// shortID shortens an instance ID to its last 5 characters, enough to tell a roll's
// servers apart.
func shortID(id string) string {
	if len(id) <= 6 {
		return id
	}
	return "…" + id[len(id)-5:]
}
