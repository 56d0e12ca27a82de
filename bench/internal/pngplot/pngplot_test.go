package pngplot

import (
	"bytes"
	"image/png"
	"testing"
)

func TestEncodeDrawsSeries(t *testing.T) {
	tests := []struct {
		name string
		plot Plot
	}{
		{"log x", Plot{Title: "ADD vs live sandboxes", XLabel: "live sandboxes", YLabel: "ms", LogX: true,
			Series: []Series{{Name: "median", X: []float64{10, 100, 1000}, Y: []float64{3, 3.2, 3.1}},
				{Name: "p90", X: []float64{10, 100, 1000}, Y: []float64{4, 4.5, 4.2}, Dashed: true}}}},
		{"linear x, one point", Plot{Title: "one", Series: []Series{{Name: "a", X: []float64{1}, Y: []float64{0}}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data, err := tc.plot.Encode()
			if err != nil {
				t.Fatal(err)
			}
			img, err := png.Decode(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			if b := img.Bounds(); b.Dx() != 800 || b.Dy() != 480 {
				t.Fatalf("size %v", b)
			}
			// The first series' color must appear somewhere.
			want := palette[0]
			found := false
			for y := 0; y < 480 && !found; y++ {
				for x := 0; x < 800; x++ {
					r, g, b, _ := img.At(x, y).RGBA()
					if uint8(r>>8) == want.R && uint8(g>>8) == want.G && uint8(b>>8) == want.B {
						found = true
						break
					}
				}
			}
			if !found {
				t.Fatal("series color not drawn")
			}
		})
	}
}

func TestEncodeRejectsBadInput(t *testing.T) {
	bad := []Plot{
		{LogX: true, Series: []Series{{X: []float64{0}, Y: []float64{1}}}},
		{Series: []Series{{X: []float64{1, 2}, Y: []float64{1}}}},
	}
	for i, p := range bad {
		if _, err := p.Encode(); err == nil {
			t.Errorf("plot %d: no error", i)
		}
	}
}
