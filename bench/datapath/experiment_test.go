package datapath

import (
	"reflect"
	"testing"
)

func TestSelectVariants(t *testing.T) {
	all := append(defaultVariants(), experimentVariants()...)
	names := func(vs []Variant) []string {
		var out []string
		for _, v := range vs {
			out = append(out, v.Name)
		}
		return out
	}
	for _, tc := range []struct {
		sel     []string
		want    []string
		wantErr bool
	}{
		{sel: nil, want: names(all)},
		{sel: []string{"cni-bpf"}, want: []string{"bridge", "cni-bpf"}},
		{sel: []string{"cni-bpf-gro", " cni-u32"}, want: []string{"bridge", "cni-u32", "cni-bpf-gro"}},
		{sel: []string{"bridge"}, want: []string{"bridge"}},
		{sel: []string{"cni-bpf", "nothing"}, wantErr: true},
	} {
		got, err := selectVariants(all, tc.sel)
		if tc.wantErr {
			if err == nil {
				t.Errorf("selectVariants(%v) = %v, want an error", tc.sel, names(got))
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(names(got), tc.want) {
			t.Errorf("selectVariants(%v) = %v, %v; want %v", tc.sel, names(got), err, tc.want)
		}
	}
}

// The redirect program ends in bpf_redirect to the target and passes what
// it does not take.
func TestXDPRedirectInsns(t *testing.T) {
	insns := xdpRedirectInsns(7, 1514)
	var redirects, passes int
	for _, ins := range insns {
		if ins.Symbol() == "redirect" && ins.Constant != 7 {
			t.Errorf("redirect target %d, want 7", ins.Constant)
		}
		if ins.Symbol() == "redirect" {
			redirects++
		}
		if ins.Symbol() == "pass" && ins.Constant == xdpPass {
			passes++
		}
	}
	if redirects != 1 || passes != 1 {
		t.Errorf("%d redirect and %d pass labels, want one each:\n%v", redirects, passes, insns)
	}
}
