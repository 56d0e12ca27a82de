package failpoint

import (
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]Action
		err  string
	}{
		{in: "", want: map[string]Action{}},
		{in: "tap-created=crash", want: map[string]Action{"tap-created": {Kind: Crash}}},
		{in: "tap-created=error,host-ready=sleep:20ms", want: map[string]Action{
			"tap-created": {Kind: Error}, "host-ready": {Kind: Sleep, Delay: 20 * time.Millisecond}}},
		{in: "teardown-nic=crash@2; remove-host=error", want: map[string]Action{
			"teardown-nic": {Kind: Crash, Hit: 2}, "remove-host": {Kind: Error}}},
		{in: "no-such-point=crash", err: "unknown failpoint"},
		{in: "tap-created", err: "want name=action"},
		{in: "tap-created=", err: "want name=action"},
		{in: "tap-created=explode", err: "unknown action"},
		{in: "tap-created=crash:1", err: "takes no argument"},
		{in: "tap-created=sleep:soon", err: "sleep:<duration>"},
		{in: "tap-created=crash@0", err: "positive number"},
		{in: "tap-created=crash@x", err: "positive number"},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Parse(%q) error = %v, want one saying %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.in, err)
			continue
		}
		if len(got) != len(tt.want) {
			t.Errorf("Parse(%q) = %v, want %v", tt.in, got, tt.want)
		}
		for k, v := range tt.want {
			if got[k] != v {
				t.Errorf("Parse(%q)[%s] = %v, want %v", tt.in, k, got[k], v)
			}
		}
	}
}

func TestSpecRoundTrip(t *testing.T) {
	for _, a := range []Action{{Kind: Crash}, {Kind: Error, Hit: 3}, {Kind: Sleep, Delay: time.Second}} {
		got, err := Parse(Spec("host-ready", a))
		if err != nil || got["host-ready"] != a {
			t.Errorf("Parse(Spec(%v)) = %v, %v", a, got, err)
		}
	}
}

func TestRegistry(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z][a-z0-9-]*$`)
	seen := map[string]bool{}
	for _, p := range Points {
		if !valid.MatchString(p.Name) {
			t.Errorf("point %q: names are lower-case words joined by '-'", p.Name)
		}
		if seen[p.Name] {
			t.Errorf("point %q registered twice", p.Name)
		}
		seen[p.Name] = true
		if p.Doc == "" || p.Component == "" || p.Op == "" {
			t.Errorf("point %q: Doc, Component and Op are required", p.Name)
		}
		if _, ok := Lookup(p.Name); !ok {
			t.Errorf("Lookup(%q) failed", p.Name)
		}
	}
	if len(Names()) != len(Points) {
		t.Errorf("Names() has %d names for %d points", len(Names()), len(Points))
	}
	if len(Select(Engine, OpAdd)) == 0 || len(Select(NRI, OpNRIRun)) == 0 {
		t.Error("Select finds no ADD or NRI points")
	}
}

func TestInjectedError(t *testing.T) {
	var e error = &InjectedError{Name: "tap-created"}
	var ie *InjectedError
	if !errors.As(e, &ie) || !strings.Contains(e.Error(), "tap-created") {
		t.Errorf("InjectedError = %v", e)
	}
}
