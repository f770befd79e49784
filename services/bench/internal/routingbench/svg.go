package routingbench

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// palette colours the setups in order (colour-blind friendly, Okabe-Ito).
var palette = []string{"#000000", "#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#999999", "#F0E442"}

// panel is one chart: a y value per step of each result against offered load.
type panel struct {
	title string
	log   bool // log-scale y
	y     func(StepStats) float64
}

// WriteSVG draws TTFT p50, TTFT p99 and the token hit rate against offered
// load, one line per setup, as a self-contained SVG.
func (d Document) WriteSVG(w io.Writer) error {
	panels := []panel{
		{title: "TTFT p50 (ms, log)", log: true, y: func(s StepStats) float64 { return float64(s.TTFTP50) }},
		{title: "TTFT p99 (ms, log)", log: true, y: func(s StepStats) float64 { return float64(s.TTFTP99) }},
		{title: "token cache-hit rate (%)", y: func(s StepStats) float64 { return 100 * s.HitRate }},
	}
	const pw, ph, left, top, gap = 300.0, 220.0, 50.0, 40.0, 60.0
	width := left + float64(len(panels))*(pw+gap)
	legendTop := top + ph + 50
	height := legendTop + 18*float64((len(d.Results)+2)/3) + 20
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="18" font-size="13">drover-bench-routing: %s fake backends, offered load (req/s) on the x axes</text>`+"\n", left, d.backends())
	xmin, xmax := d.xRange()
	for i, p := range panels {
		x0 := left + float64(i)*(pw+gap)
		ymin, ymax := d.yRange(p)
		sx := func(v float64) float64 { return x0 + (v-xmin)/(xmax-xmin)*pw }
		sy := func(v float64) float64 {
			lo, hi := ymin, ymax
			if p.log {
				v, lo, hi = math.Log10(math.Max(v, lo)), math.Log10(lo), math.Log10(hi)
			}
			return top + ph - (v-lo)/(hi-lo)*ph
		}
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-size="12">%s</text>`+"\n", x0, top-8, html.EscapeString(p.title))
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#888"/>`+"\n", x0, top, pw, ph)
		for _, t := range ticks(ymin, ymax, p.log) {
			y := sy(t)
			fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#eee"/><text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n",
				x0, x0+pw, y, y, x0-4, y+4, fmtTick(t))
		}
		for _, t := range ticks(xmin, xmax, false) {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n", sx(t), top+ph+14, fmtTick(t))
		}
		for ri, r := range d.Results {
			var pts []string
			for _, s := range r.Steps {
				if s.Sent-s.Errors > 0 {
					pts = append(pts, fmt.Sprintf("%.1f,%.1f", sx(s.Offered), sy(p.y(s))))
				}
			}
			col := palette[ri%len(palette)]
			dash := ""
			if r.Replicas > 1 {
				dash = ` stroke-dasharray="5,3"`
			}
			fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="1.8"%s/>`+"\n", strings.Join(pts, " "), col, dash)
		}
	}
	for ri, r := range d.Results {
		x := left + float64(ri%3)*(pw+gap)
		y := legendTop + 18*float64(ri/3)
		dash := ""
		if r.Replicas > 1 {
			dash = ` stroke-dasharray="5,3"`
		}
		fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.0f" y2="%.0f" stroke="%s" stroke-width="2"%s/><text x="%.0f" y="%.0f">%s</text>`+"\n",
			x, x+24, y, y, palette[ri%len(palette)], dash, x+30, y+4, html.EscapeString(r.Name))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func (d Document) backends() string { return d.Settings["backends"] }

func (d Document) xRange() (float64, float64) {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, r := range d.Results {
		for _, s := range r.Steps {
			lo, hi = math.Min(lo, s.Offered), math.Max(hi, s.Offered)
		}
	}
	if math.IsInf(lo, 0) || lo == hi {
		return 0, math.Max(hi, 1)
	}
	return 0, hi
}

func (d Document) yRange(p panel) (float64, float64) {
	if !p.log {
		return 0, 100
	}
	lo, hi := math.Inf(1), 1.0
	for _, r := range d.Results {
		for _, s := range r.Steps {
			if v := p.y(s); v > 0 {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	if math.IsInf(lo, 0) {
		lo = 1
	}
	lo = math.Pow(10, math.Floor(math.Log10(math.Max(lo, 1))))
	hi = math.Pow(10, math.Ceil(math.Log10(hi*1.01)))
	if hi <= lo {
		hi = lo * 10
	}
	return lo, hi
}

// ticks are round values between lo and hi: powers of ten on a log axis,
// about five steps of 1, 2 or 5 times a power of ten otherwise.
func ticks(lo, hi float64, log bool) []float64 {
	var out []float64
	if log {
		for v := lo; v <= hi*1.0001; v *= 10 {
			out = append(out, v)
		}
		return out
	}
	raw := (hi - lo) / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{2, 5, 10} {
		if step < raw {
			step = m * mag
		}
	}
	for v := math.Ceil(lo/step) * step; v <= hi+step/1000; v += step {
		out = append(out, v)
	}
	return out
}

func fmtTick(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%gk", v/1000)
	}
	return fmt.Sprintf("%g", v)
}
