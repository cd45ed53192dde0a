package bench

import (
	"math"
	"math/bits"
)

// subBits is log2 of the sub-buckets per power of two: 32 sub-buckets keep
// every bucket within about 3% of the values it holds.
const subBits = 5

const (
	subCount = 1 << subBits
	// maxExp covers values up to 2^(maxExp+subBits+1) ns, about 2 minutes.
	maxExp   = 31
	nBuckets = (maxExp + 2) * subCount
)

// Histogram records durations in nanoseconds in log-linear buckets, with
// the exact count, sum, maximum and number of values at or above Threshold.
// It is not safe for concurrent use: give each goroutine its own and Merge
// them afterwards.
type Histogram struct {
	// Threshold, if positive, makes Over count values >= Threshold exactly.
	Threshold int64

	counts [nBuckets]uint64
	n      uint64
	sum    float64
	max    int64
	over   uint64
}

func bucketOf(v int64) int {
	if v < subCount {
		if v < 0 {
			return 0
		}
		return int(v)
	}
	e := bits.Len64(uint64(v)) - subBits - 1 // v>>e is in [subCount, 2*subCount)
	i := (e+1)*subCount + int(v>>e) - subCount
	if i >= nBuckets {
		return nBuckets - 1
	}
	return i
}

// bucketHigh returns the largest value bucket i holds.
func bucketHigh(i int) int64 {
	if i < 2*subCount {
		return int64(i)
	}
	e := i/subCount - 1
	m := int64(i%subCount + subCount)
	return (m+1)<<e - 1
}

// Record adds one value.
func (h *Histogram) Record(v int64) {
	h.counts[bucketOf(v)]++
	h.n++
	h.sum += float64(v)
	if v > h.max {
		h.max = v
	}
	if h.Threshold > 0 && v >= h.Threshold {
		h.over++
	}
}

// Merge adds o's values to h. Both must have the same Threshold.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	h.max = max(h.max, o.max)
	h.over += o.over
}

// Count returns how many values were recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Max returns the largest value recorded (exact).
func (h *Histogram) Max() int64 { return h.max }

// Mean returns the mean of the values recorded, NaN if none.
func (h *Histogram) Mean() float64 {
	if h.n == 0 {
		return math.NaN()
	}
	return h.sum / float64(h.n)
}

// OverShare returns the fraction of values >= Threshold, NaN if none.
func (h *Histogram) OverShare() float64 {
	if h.n == 0 {
		return math.NaN()
	}
	return float64(h.over) / float64(h.n)
}

// Quantile returns an upper bound, within one bucket (about 3%), of the q-th
// quantile (0 < q <= 1), never above Max; NaN if nothing was recorded.
func (h *Histogram) Quantile(q float64) float64 {
	if h.n == 0 {
		return math.NaN()
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return float64(min(bucketHigh(i), h.max))
		}
	}
	return float64(h.max)
}
