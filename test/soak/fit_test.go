package soak

import (
	"math"
	"testing"
	"time"
)

func TestLeastSquares(t *testing.T) {
	// A line with alternating noise of ±1: the slope is the line's.
	var ps []Point
	for i := range 100 {
		noise := 1.0
		if i%2 == 1 {
			noise = -1
		}
		ps = append(ps, Point{T: float64(i) * 5, V: 100 + 0.01*float64(i)*5 + noise})
	}
	f := LeastSquares(ps)
	if f.N != 100 || math.Abs(f.Slope-0.01) > 0.001 {
		t.Errorf("slope %v over %d points, want 0.01 over 100", f.Slope, f.N)
	}
	if f.StdErr <= 0 || f.StdErr > 0.001 {
		t.Errorf("standard error %v, want small and positive", f.StdErr)
	}
	if math.Abs(f.PerHour()-36) > 3.6 {
		t.Errorf("per hour %v, want 36", f.PerHour())
	}

	flat := LeastSquares([]Point{{0, 5}, {1, 5}, {2, 5}, {3, 5}})
	if flat.Slope != 0 || flat.StdErr != 0 || flat.N != 4 {
		t.Errorf("flat series: %+v", flat)
	}
	if f := LeastSquares([]Point{{0, 1}, {1, 2}}); f.N != 0 {
		t.Errorf("two points fitted: %+v", f)
	}
	if f := LeastSquares([]Point{{1, 1}, {1, 2}, {1, 3}}); f.N != 0 {
		t.Errorf("points at one time fitted: %+v", f)
	}
}

func TestSecondHalf(t *testing.T) {
	ps := []Point{{0, 0}, {10, 0}, {20, 0}, {30, 0}, {40, 0}}
	got := SecondHalf(ps)
	if len(got) != 3 || got[0].T != 20 {
		t.Errorf("second half of 0..40: %v, want from 20", got)
	}
	if SecondHalf(nil) != nil {
		t.Error("second half of nothing")
	}
}

// TestStepSlope: the steepest slope a band of width R gives over a window w,
// a step from its bottom to its top in the middle, is 1.5·R/w (bounds.go).
func TestStepSlope(t *testing.T) {
	const r, w = 8.0, 900.0 // MiB, seconds
	var ps []Point
	for i := range 181 {
		v := 0.0
		if float64(i*5) > w/2 {
			v = r
		}
		ps = append(ps, Point{T: float64(i * 5), V: v})
	}
	got, want := LeastSquares(ps).Slope, 1.5*r/w
	if math.Abs(got-want)/want > 0.02 {
		t.Errorf("slope of a step of %v over %vs: %v, want %v", r, w, got, want)
	}
	if b := RSSSlopeBound(15 * time.Minute); math.Abs(b-64) > 0.01 {
		t.Errorf("RSS bound over 15 minutes: %v, want 64", b)
	}
}
