package hostnet

import (
	"errors"
	"testing"
)

func TestParseDataPathMode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want DataPathMode
		ok   bool
	}{
		{"", "", true}, {"auto", ModeAuto, true}, {"BPF", ModeBPF, true}, {" u32 ", ModeU32, true},
		{"tc", "", false}, {"ebpf", "", false},
	} {
		got, err := ParseDataPathMode(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseDataPathMode(%q) = %q, %v", tc.in, got, err)
		}
	}
}

func TestResolvedModeAndChoice(t *testing.T) {
	failing := func() error { return errors.New("no bpf here") }
	passing := func() error { return nil }
	probed := false
	counting := func() error { probed = true; return nil }
	for _, tc := range []struct {
		name  string
		env   string
		opts  JoinOptions
		want  DataPath
		isErr bool
	}{
		{"unset is auto", "", JoinOptions{Probe: passing}, DataPathBPF, false},
		{"auto falls back", "", JoinOptions{Mode: ModeAuto, Probe: failing}, DataPathU32, false},
		{"bpf insists", "", JoinOptions{Mode: ModeBPF, Probe: failing}, "", true},
		{"env picks u32", "u32", JoinOptions{Probe: passing}, DataPathU32, false},
		{"conf beats env", "u32", JoinOptions{Mode: ModeBPF, Probe: passing}, DataPathBPF, false},
		{"bad env", "fast", JoinOptions{Probe: passing}, "", true},
		{"bad mode", "", JoinOptions{Mode: "fast", Probe: passing}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(DataPathEnv, tc.env)
			got, err := ChooseDataPath(tc.opts)
			if (err != nil) != tc.isErr || got != tc.want {
				t.Errorf("ChooseDataPath = %q, %v; want %q (error %v)", got, err, tc.want, tc.isErr)
			}
			if tc.opts.Mode == ModeBPF && tc.isErr && !errors.Is(err, ErrBPFUnavailable) {
				t.Errorf("error %v does not wrap ErrBPFUnavailable", err)
			}
		})
	}
	t.Setenv(DataPathEnv, "")
	if dp, err := ChooseDataPath(JoinOptions{Mode: ModeU32, Probe: counting}); err != nil || dp != DataPathU32 || probed {
		t.Errorf("mode u32: %q %v, probed=%v; want u32 without a probe", dp, err, probed)
	}
}

// The programs differ by target and helper, so CHECK's tag comparison
// tells them apart.
func TestRedirectProgramsAreDistinct(t *testing.T) {
	tags := map[string]string{}
	for _, idx := range []int{1, 2, 1 << 20} {
		for _, h := range []BPFHelper{HelperRedirect, HelperRedirectPeer} {
			spec := redirectSpec(idx, h)
			tag, err := spec.Tag()
			if err != nil {
				t.Fatal(err)
			}
			key := h.String() + "/" + string(rune('0'+idx%10))
			if prev, dup := tags[tag]; dup {
				t.Errorf("%s and %s have the same tag", prev, key)
			}
			tags[tag] = key
			ok, err := redirectInsns(idx, h).HasTag(tag, hostByteOrder())
			if err != nil || !ok {
				t.Errorf("HasTag of its own tag: %v %v", ok, err)
			}
		}
	}
	if _, err := loadRedirect(0, HelperRedirect); err == nil {
		t.Error("ifindex 0 accepted")
	}
}

func TestIsBPFUnsupported(t *testing.T) {
	if IsBPFUnsupported(nil) || IsBPFUnsupported(errors.New("other")) {
		t.Error("unrelated errors count as unsupported")
	}
	if !IsBPFUnsupported(&bpfLoadError{errors.New("x")}) {
		t.Error("a load error is not unsupported")
	}
}
