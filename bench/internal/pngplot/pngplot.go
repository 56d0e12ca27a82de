// Package pngplot draws small line plots as PNG images with nothing but the
// standard image packages and a fixed bitmap font: enough for latency
// curves in a performance report.
package pngplot

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"strconv"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Series is one line.
type Series struct {
	Name   string
	X, Y   []float64
	Dashed bool
	// Color index into the palette; series with the same index share a color.
	Color int
}

// Plot is a line plot.
type Plot struct {
	Title  string
	XLabel string
	YLabel string
	// LogX draws the x axis on a log scale (all x must be > 0).
	LogX bool
	// XTicks are the x positions labelled; empty means the distinct x values.
	XTicks []float64
	Series []Series
	Width  int // pixels; 0 means 800
	Height int // pixels; 0 means 480
}

var palette = []color.RGBA{
	{0x1f, 0x77, 0xb4, 0xff}, // blue
	{0xd6, 0x27, 0x28, 0xff}, // red
	{0x2c, 0xa0, 0x2c, 0xff}, // green
	{0xff, 0x7f, 0x0e, 0xff}, // orange
	{0x94, 0x67, 0xbd, 0xff}, // purple
	{0x8c, 0x56, 0x4b, 0xff}, // brown
}

var (
	black = color.RGBA{0, 0, 0, 0xff}
	grid  = color.RGBA{0xdd, 0xdd, 0xdd, 0xff}
	white = color.RGBA{0xff, 0xff, 0xff, 0xff}
)

// Encode draws the plot as a PNG.
func (p *Plot) Encode() ([]byte, error) {
	w, h := p.Width, p.Height
	if w == 0 {
		w = 800
	}
	if h == 0 {
		h = 480
	}
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), &image.Uniform{white}, image.Point{}, draw.Src)

	left, right, top, bottom := 70, 20, 40, 60
	legendLines := 0
	for _, s := range p.Series {
		if s.Name != "" {
			legendLines++
		}
	}
	bottom += 14 * ((legendLines + 1) / 2)
	pw, ph := w-left-right, h-top-bottom
	if pw < 50 || ph < 50 {
		return nil, fmt.Errorf("plot %q: %dx%d is too small", p.Title, w, h)
	}

	xmin, xmax := math.Inf(1), math.Inf(-1)
	ymax := 0.0
	for _, s := range p.Series {
		if len(s.X) != len(s.Y) {
			return nil, fmt.Errorf("plot %q: series %q has %d x and %d y", p.Title, s.Name, len(s.X), len(s.Y))
		}
		for i := range s.X {
			if p.LogX && s.X[i] <= 0 {
				return nil, fmt.Errorf("plot %q: x=%v on a log axis", p.Title, s.X[i])
			}
			xmin, xmax = math.Min(xmin, s.X[i]), math.Max(xmax, s.X[i])
			ymax = math.Max(ymax, s.Y[i])
		}
	}
	if math.IsInf(xmin, 0) {
		xmin, xmax = 1, 10
	}
	tx := func(x float64) float64 { return x }
	if p.LogX {
		tx = math.Log10
	}
	x0, x1 := tx(xmin), tx(xmax)
	if x1 == x0 {
		x0, x1 = x0-1, x1+1
	}
	pad := (x1 - x0) * 0.05
	x0, x1 = x0-pad, x1+pad
	ystep := niceStep(ymax / 5)
	if ymax == 0 {
		ystep = 1
	}
	ytop := math.Ceil(ymax*1.05/ystep) * ystep
	if ytop == 0 {
		ytop = ystep
	}
	px := func(x float64) int { return left + int(math.Round((tx(x)-x0)/(x1-x0)*float64(pw))) }
	py := func(y float64) int { return top + ph - int(math.Round(y/ytop*float64(ph))) }

	// Grid and y ticks.
	for y := 0.0; y <= ytop+ystep/2; y += ystep {
		yy := py(y)
		hline(img, left, left+pw, yy, grid)
		label := strconv.FormatFloat(y, 'f', decimals(ystep), 64)
		text(img, left-8-textWidth(label), yy+4, label, black)
	}
	// X ticks.
	ticks := p.XTicks
	if len(ticks) == 0 {
		seen := map[float64]bool{}
		for _, s := range p.Series {
			for _, x := range s.X {
				if !seen[x] {
					seen[x] = true
					ticks = append(ticks, x)
				}
			}
		}
	}
	for _, x := range ticks {
		xx := px(x)
		vline(img, xx, top, top+ph, grid)
		label := strconv.FormatFloat(x, 'g', -1, 64)
		text(img, xx-textWidth(label)/2, top+ph+16, label, black)
	}
	// Axes.
	hline(img, left, left+pw, top+ph, black)
	vline(img, left, top, top+ph, black)

	// Series.
	for _, s := range p.Series {
		c := palette[s.Color%len(palette)]
		for i := range s.X {
			x, y := px(s.X[i]), py(s.Y[i])
			fillRect(img, x-3, y-3, x+3, y+3, c)
			if i > 0 {
				line(img, px(s.X[i-1]), py(s.Y[i-1]), x, y, c, s.Dashed)
			}
		}
	}

	// Titles.
	text(img, (w-textWidth(p.Title))/2, 20, p.Title, black)
	text(img, left+(pw-textWidth(p.XLabel))/2, top+ph+36, p.XLabel, black)
	text(img, 8, top-10, p.YLabel, black)

	// Legend, two columns under the x label.
	i := 0
	for _, s := range p.Series {
		if s.Name == "" {
			continue
		}
		c := palette[s.Color%len(palette)]
		lx := left + (i%2)*(pw/2)
		ly := top + ph + 54 + 14*(i/2)
		line(img, lx, ly-4, lx+24, ly-4, c, s.Dashed)
		fillRect(img, lx+10, ly-7, lx+14, ly-1, c)
		text(img, lx+30, ly, s.Name, black)
		i++
	}

	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("plot %q: %w", p.Title, err)
	}
	return buf.Bytes(), nil
}

// WriteFile draws the plot into a PNG file.
func (p *Plot) WriteFile(path string) error {
	data, err := p.Encode()
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("plot %q: %w", p.Title, err)
	}
	return nil
}

// niceStep rounds a raw step to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*mag {
			return m * mag
		}
	}
	return 10 * mag
}

func decimals(step float64) int {
	if step >= 1 {
		return 0
	}
	return int(math.Ceil(-math.Log10(step)))
}

var face = basicfont.Face7x13

func textWidth(s string) int { return font.MeasureString(face, s).Round() }

func text(img *image.RGBA, x, y int, s string, c color.Color) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: face, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

func hline(img *image.RGBA, x0, x1, y int, c color.RGBA) {
	for x := x0; x <= x1; x++ {
		img.SetRGBA(x, y, c)
	}
}

func vline(img *image.RGBA, x, y0, y1 int, c color.RGBA) {
	for y := y0; y <= y1; y++ {
		img.SetRGBA(x, y, c)
	}
}

func fillRect(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA) {
	draw.Draw(img, image.Rect(x0, y0, x1, y1), &image.Uniform{c}, image.Point{}, draw.Src)
}

// line draws a 2-pixel-wide line (Bresenham), dashed when asked.
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA, dashed bool) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	e := dx + dy
	n := 0
	for {
		if !dashed || (n/6)%2 == 0 {
			img.SetRGBA(x0, y0, c)
			img.SetRGBA(x0+1, y0, c)
			img.SetRGBA(x0, y0+1, c)
		}
		n++
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v > 0:
		return 1
	case v < 0:
		return -1
	}
	return 0
}
