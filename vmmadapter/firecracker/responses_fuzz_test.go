package firecracker_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/firecracker"
)

// FuzzResponses feeds the adapter arbitrary answers of a Firecracker: the
// instance info, version, VM config and the PUT/DELETE of an interface each
// get a fuzzed status and body. No call may panic or hang; a hot-add that
// succeeds must have been answered 2xx, and the iface_id returned must be
// valid for Firecracker.
func FuzzResponses(f *testing.F) {
	started := []byte(`{"app_name":"Firecracker","id":"vm","state":"Running","vmm_version":"1.16.1"}`)
	notStarted := []byte(`{"app_name":"Firecracker","id":"vm","state":"Not started","vmm_version":"1.14.0"}`)
	cfg := []byte(`{"network-interfaces":[{"iface_id":"eth0","host_dev_name":"tapeth0"}]}`)
	f.Add(200, started, 200, []byte(`{"firecracker_version":"1.16.1"}`), 200, cfg, 204, []byte{}, 204, []byte{})
	f.Add(200, notStarted, 200, []byte(`{}`), 200, []byte(`{"network-interfaces":[]}`), 204, []byte{}, 400, []byte(`{"fault_message":"The requested operation is not supported before starting the microVM."}`))
	f.Add(200, started, 200, []byte(`{}`), 200, cfg, 400, []byte(`{"fault_message":"PCI is not enabled"}`), 400, []byte(`{"fault_message":"Device not found"}`))
	f.Add(200, []byte(`{"state":"Running","vmm_version":"dev"}`), 200, []byte(`{"firecracker_version":"x"}`), 200, []byte(`{"network-interfaces":null}`), 200, []byte(`null`), 500, []byte("\x00"))
	f.Add(500, []byte(`{"fault_message":null}`), 404, []byte(`[]`), 200, []byte(`{"network-interfaces":[{"iface_id":1}]}`), 400, []byte(`{"fault_message":"Device ID in use"}`), 204, []byte{})
	f.Add(200, []byte(`{"state":"Running","vmm_version":"999999999999999999999.1"}`), 200, []byte{}, 200, []byte(`{`), 400, []byte(`{"fault_message":"Resource busy (os error 16)"}`), 200, []byte(`{}`))

	// Keys: "GET /", "GET /version", "GET /vm/config", and "PUT" or
	// "DELETE" for any interface; anything else is an invalid request.
	h := &vmmsim.Canned{
		Key: func(r *http.Request) string {
			if strings.HasPrefix(r.URL.Path, "/network-interfaces/") {
				return r.Method
			}
			return r.Method + " " + r.URL.Path
		},
		Default: vmmsim.Answer{Status: 400, Body: []byte(`{"fault_message":"Invalid request method and/or path"}`)},
	}
	sock := vmmsim.ServeUnix(f, "fc.sock", h)
	opts := vmmadapter.Options{CallTimeout: 500 * time.Millisecond}

	f.Fuzz(func(t *testing.T, inStatus int, inBody []byte, verStatus int, verBody []byte, cfgStatus int, cfgBody []byte, putStatus int, putBody []byte, delStatus int, delBody []byte) {
		h.Set(map[string]vmmsim.Answer{
			"GET /":          {Status: vmmsim.FuzzStatus(inStatus), Body: inBody},
			"GET /version":   {Status: vmmsim.FuzzStatus(verStatus), Body: verBody},
			"GET /vm/config": {Status: vmmsim.FuzzStatus(cfgStatus), Body: cfgBody},
			"PUT":            {Status: vmmsim.FuzzStatus(putStatus), Body: putBody},
			"DELETE":         {Status: vmmsim.FuzzStatus(delStatus), Body: delBody},
		})
		a, err := firecracker.New(sock, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()

		if in, err := a.Info(ctx); err == nil && in.Kind != vmmadapter.Firecracker {
			t.Errorf("Info = %+v", in)
		}
		_, _ = a.NICs(ctx)
		att, err := a.AddNIC(ctx, vmmadapter.NIC{ID: "eth-0", Tap: "tapeth0", MAC: "02:00:00:00:00:01", MTU: 1500})
		if err == nil {
			if st := vmmsim.FuzzStatus(putStatus); st < 200 || st >= 300 {
				t.Errorf("AddNIC succeeded on status %d", st)
			}
			if att.ID != firecracker.IfaceID("eth-0") {
				t.Errorf("AddNIC attachment %+v, want iface_id %s", att, firecracker.IfaceID("eth-0"))
			}
		}
		_ = a.RemoveNIC(ctx, "eth-0")
		if ctx.Err() != nil {
			t.Fatalf("calls outlived their deadline: %v", ctx.Err())
		}
	})
}

// FuzzIfaceID: every NIC id maps to an iface_id Firecracker accepts
// ([A-Za-z0-9_]+, at most MaxIfaceIDLen bytes), the same one each time,
// and valid ids are kept as they are.
func FuzzIfaceID(f *testing.F) {
	for _, s := range []string{"eth0", "net1", "a-b", "a.b", "", "../../x", "eth0\n", "\x00", "ünï", strings.Repeat("x", 100)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		got := firecracker.IfaceID(id)
		if got == "" || len(got) > firecracker.MaxIfaceIDLen {
			t.Fatalf("IfaceID(%q) = %q: empty or too long", id, got)
		}
		for i := 0; i < len(got); i++ {
			c := got[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
				t.Fatalf("IfaceID(%q) = %q: byte %q not allowed", id, got, c)
			}
		}
		if firecracker.IfaceID(id) != got || firecracker.IfaceID(got) != got {
			t.Fatalf("IfaceID(%q) = %q is not stable", id, got)
		}
	})
}
