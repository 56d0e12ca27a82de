package apiclient

import (
	"reflect"
	"testing"
)

func TestDecodeErrorBody(t *testing.T) {
	tests := []struct {
		name  string
		body  string
		chain []string
		raw   string
		msg   string
	}{
		{"ch v47+ list", `["Error from API","The network device could not be added to the VM","Device or resource busy (os error 16)"]`,
			[]string{"Error from API", "The network device could not be added to the VM", "Device or resource busy (os error 16)"}, "",
			"Error from API: The network device could not be added to the VM: Device or resource busy (os error 16)"},
		{"ch list with blanks", `["a", " ", "b "]`, []string{"a", "b"}, "", "a: b"},
		{"fc fault", `{"fault_message":"PCI is not enabled"}`, []string{"PCI is not enabled"}, "", "PCI is not enabled"},
		{"ch v46 plain text", "Error from API: VM is not created\n", nil, "Error from API: VM is not created", "Error from API: VM is not created"},
		{"empty", "", nil, "", "Internal Server Error"},
		{"binary garbage", "\x00\x01<html>\n", nil, `\x00\x01<html>`, `\x00\x01<html>`},
		{"other json", `{"error":"x"}`, nil, `{"error":"x"}`, `{"error":"x"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, raw := DecodeErrorBody([]byte(tt.body))
			if !reflect.DeepEqual(chain, tt.chain) && !(len(chain) == 0 && len(tt.chain) == 0) || raw != tt.raw {
				t.Fatalf("DecodeErrorBody = %q, %q; want %q, %q", chain, raw, tt.chain, tt.raw)
			}
			e := &APIError{Status: 500, Chain: chain, RawBody: raw}
			if e.Message() != tt.msg {
				t.Fatalf("Message = %q, want %q", e.Message(), tt.msg)
			}
		})
	}
	long := make([]byte, 1000)
	for i := range long {
		long[i] = 'x'
	}
	if _, raw := DecodeErrorBody(long); len(raw) > 310 {
		t.Errorf("raw body not shortened: %d bytes", len(raw))
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in string
		v  Version
		ok bool
	}{
		{"53.0.0", Version{53, 0, 0, ""}, true},
		{"v53.0", Version{53, 0, 0, ""}, true},
		{"v40.0-12-gdeadbeef", Version{40, 0, 0, ""}, true},
		{"1.16.1", Version{1, 16, 1, ""}, true},
		{"1.17.0-dev", Version{1, 17, 0, "dev"}, true},
		{"1.16.0-dev", Version{1, 16, 0, "dev"}, true},
		{"54", Version{54, 0, 0, ""}, true},
		{"", Version{}, false},
		{"dev", Version{}, false},
	}
	for _, tt := range tests {
		v, ok := ParseVersion(tt.in)
		if v != tt.v || ok != tt.ok {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v, %v", tt.in, v, ok, tt.v, tt.ok)
		}
	}
	if !(Version{1, 16, 0, ""}).AtLeast(1, 16) || (Version{1, 15, 9, ""}).AtLeast(1, 16) || !(Version{2, 0, 0, ""}).AtLeast(1, 16) {
		t.Error("AtLeast wrong")
	}
}

// TestReleasedAtLeast: a pre-release of a version is before it (a
// "1.16.0-dev" build may predate a feature of 1.16.0), later ones are not.
func TestReleasedAtLeast(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want bool
	}{
		{"1.16.0", true}, {"1.16.0-dev", false}, {"1.15.1", false}, {"1.16.1-dev", true},
		{"1.17.0-dev", true}, {"2.0.0-rc1", true}, {"v1.16.0-3-gabc123", true},
	} {
		v, _ := ParseVersion(tt.in)
		if got := v.ReleasedAtLeast(1, 16, 0); got != tt.want {
			t.Errorf("%q ReleasedAtLeast(1.16.0) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
