package timedexec

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "plugin")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExecPluginRecordsCalls(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		wantOut string
		wantErr string
	}{
		{"success", `cat >/dev/null; echo '{"cniVersion":"1.0.0"}'`, "{\"cniVersion\":\"1.0.0\"}\n", ""},
		{"cni error", `echo '{"cniVersion":"1.0.0","code":7,"msg":"bad conf"}'; exit 1`, "", "bad conf"},
		{"silent failure", `exit 3`, "", "netplugin failed with no error message"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			log := &Log{}
			e := &Exec{Env: []string{"EXTRA=1"}}
			out, err := e.ExecPlugin(WithLog(context.Background(), log), script(t, tc.body), []byte(`{}`), []string{"CNI_COMMAND=ADD", "PATH=/usr/bin:/bin"})
			if tc.wantErr == "" {
				if err != nil || string(out) != tc.wantOut {
					t.Fatalf("got %q, %v; want %q", out, err, tc.wantOut)
				}
			} else {
				var te *types.Error
				if !errors.As(err, &te) || !contains(te.Msg, tc.wantErr) {
					t.Fatalf("error %v, want a CNI error with %q", err, tc.wantErr)
				}
			}
			calls := log.Calls()
			if len(calls) != 1 {
				t.Fatalf("%d calls recorded", len(calls))
			}
			c := calls[0]
			if c.Plugin != "plugin" || c.Cmd != "ADD" || c.PID <= 0 || c.Duration() <= 0 || (c.Err != nil) != (tc.wantErr != "") {
				t.Fatalf("call %+v", c)
			}
			if log.Total("plugin", "ADD") != c.Duration() || log.Total("other", "") != 0 {
				t.Fatal("Total does not add up")
			}
		})
	}
}

func TestExecPluginPassesEnv(t *testing.T) {
	out, err := (&Exec{Env: []string{"VMNB_X=42"}}).ExecPlugin(context.Background(), script(t, `echo "$VMNB_X"`), nil, []string{"PATH=/usr/bin:/bin"})
	if err != nil || string(out) != "42\n" {
		t.Fatalf("got %q, %v", out, err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
