package soak

import "math"

// Point is one sample of a series: seconds since the start and a value.
type Point struct {
	T, V float64
}

// Fit is a least-squares line through a series.
type Fit struct {
	// Slope is in value units per second; PerHour converts it.
	Slope float64
	// StdErr is the standard error of Slope (same unit): how much of the slope
	// the scatter around the line alone would explain.
	StdErr float64
	// N is the number of points fitted.
	N int
}

// PerHour is the slope per hour.
func (f Fit) PerHour() float64 { return f.Slope * 3600 }

// StdErrPerHour is the slope's standard error per hour.
func (f Fit) StdErrPerHour() float64 { return f.StdErr * 3600 }

// LeastSquares fits a line v = a + b·t through ps (ordinary least squares).
// Fewer than three points, or all at one time, give no fit (N 0).
func LeastSquares(ps []Point) Fit {
	n := float64(len(ps))
	if len(ps) < 3 {
		return Fit{}
	}
	var mt, mv float64
	for _, p := range ps {
		mt += p.T
		mv += p.V
	}
	mt, mv = mt/n, mv/n
	var stt, stv float64
	for _, p := range ps {
		stt += (p.T - mt) * (p.T - mt)
		stv += (p.T - mt) * (p.V - mv)
	}
	if stt == 0 {
		return Fit{}
	}
	b := stv / stt
	a := mv - b*mt
	var sse float64
	for _, p := range ps {
		r := p.V - (a + b*p.T)
		sse += r * r
	}
	return Fit{Slope: b, StdErr: math.Sqrt(sse / (n - 2) / stt), N: len(ps)}
}

// SecondHalf is the points from the middle of the run's time span on: the
// part after the warm-up (caches filled, the heap grown to its working size),
// where a leak shows as a slope and a settled agent as none.
func SecondHalf(ps []Point) []Point {
	if len(ps) == 0 {
		return nil
	}
	mid := (ps[0].T + ps[len(ps)-1].T) / 2
	for i, p := range ps {
		if p.T >= mid {
			return ps[i:]
		}
	}
	return nil
}
