package main

import "testing"

func TestParseShape(t *testing.T) {
	for _, c := range []struct {
		in           string
		conns, chans int
	}{{"4x4", 4, 4}, {"1x1", 1, 1}, {"8x2", 8, 2}, {"64x64", 64, 64}} {
		conns, chans, err := parseShape(c.in)
		if err != nil || conns != c.conns || chans != c.chans {
			t.Errorf("parseShape(%q) = %d, %d, %v; want %d, %d, nil", c.in, conns, chans, err, c.conns, c.chans)
		}
	}
	for _, in := range []string{"", "4", "4x", "x4", "0x4", "4x0", "-1x4", "65x1", "4X4", "4x4x4", "ax4"} {
		if conns, chans, err := parseShape(in); err == nil {
			t.Errorf("parseShape(%q) = %d, %d, nil; want an error", in, conns, chans)
		}
	}
}
