package apiclient

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzDecodeErrorBody: whatever a VMM puts in an error body, the decoded
// message is bounded, one line, free of control characters when it is the
// raw text, and decoding never panics.
func FuzzDecodeErrorBody(f *testing.F) {
	for _, s := range []string{
		`["Error from API","The network device could not be added to the VM","Device or resource busy (os error 16)"]`,
		`{"fault_message":"PCI is not enabled"}`,
		"Error from API: VM is not created\n",
		"", "\x00\x01<html>\n", `{"error":"x"}`, `[1,2,3]`, `{"fault_message":null}`, `["\u0000\n\r"]`,
		strings.Repeat("x", 2000), "\xff\xfe\xfd", `[""," "]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		chain, raw := DecodeErrorBody(body)
		if len(chain) > 0 && raw != "" {
			t.Fatalf("both a chain %q and a raw body %q", chain, raw)
		}
		// 300 input bytes at most, a control byte shown as 4 ("\x1d"), then "…".
		if utf8.RuneCountInString(raw) > 4*300+1 {
			t.Fatalf("raw body not shortened: %d runes", utf8.RuneCountInString(raw))
		}
		for _, r := range raw {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("raw body keeps control character %q: %q", r, raw)
			}
		}
		e := &APIError{Status: 500, Chain: chain, RawBody: raw}
		_ = e.Error()
		_ = e.Contains("busy")
	})
}

// FuzzParseVersion: any version string parses or is refused, never panics,
// and a parsed version compares consistently.
func FuzzParseVersion(f *testing.F) {
	for _, s := range []string{"53.0.0", "v53.0", "v40.0-12-gdeadbeef", "1.16.1", "1.17.0-dev", "54", "", "dev", "1.-2", "99999999999999999999.1", "v.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, ok := ParseVersion(s)
		if !ok {
			if v != (Version{}) {
				t.Fatalf("refused %q but returned %v", s, v)
			}
			return
		}
		if v.AtLeast(v.Major, v.Minor) != true {
			t.Fatalf("%v is not AtLeast itself", v)
		}
		if v.AtLeast(v.Major+1, 0) && v.Major+1 > v.Major {
			t.Fatalf("%v AtLeast %d.0", v, v.Major+1)
		}
	})
}
