package cloudhypervisor_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/cloudhypervisor"
)

// FuzzResponses feeds the adapter arbitrary answers of a Cloud Hypervisor:
// vmm.ping, vm.info, vm.add-net and vm.remove-device each get a fuzzed
// status and body. Whatever the VMM says, no call may panic or hang, a
// successful add must name a device, and a refusal must be an error.
func FuzzResponses(f *testing.F) {
	ping := []byte(`{"build_version":"v53.0","version":"53.0.0","pid":1}`)
	info := []byte(`{"config":{"net":[{"id":"eth0","tap":"tapeth0"}]},"state":"Running","device_tree":{"eth0":{"id":"eth0"}}}`)
	gone := []byte(`{"config":{"net":[]},"state":"Running","device_tree":{}}`)
	f.Add(200, ping, 200, info, 200, []byte(`{"id":"eth0","bdf":"0000:00:05.0"}`), 204, []byte{})
	f.Add(200, ping, 200, gone, 204, []byte{}, 204, []byte{})
	f.Add(200, ping, 500, []byte(`["Error from API","VM is not created"]`), 500, []byte(`["VmNotCreated"]`), 404, []byte{})
	f.Add(200, ping, 200, info, 500, []byte(`["Error from API","Identifier eth0 is not unique"]`), 500, []byte(`["Error from API","The device could not be removed from the VM","No device with id \"eth0\" to remove"]`))
	// CH's own "not found" wording (vmm/src/device_manager.rs UnknownDeviceId;
	// v46–v52 without the id, v53+ with it; 404 after v53).
	f.Add(200, ping, 200, info, 200, []byte(`{"id":"eth0","bdf":"0000:00:06.0"}`), 500, []byte(`["Error from API","The device could not be removed from the VM","Error from device manager","Failed to find device corresponding to the given identifier"]`))
	f.Add(200, ping, 200, info, 200, []byte(`{"id":"eth0","bdf":"0000:00:06.0"}`), 404, []byte(`["Error from API","The device could not be removed from the VM","Error from device manager","Failed to find device corresponding to the given identifier: eth0"]`))
	f.Add(200, []byte(`{"build_version":"v48.0","version":"48.0.0","pid":1}`), 200, info, 200, []byte(`{"id":"eth0","bdf":"0000:00:06.0"}`), 204, []byte{})
	f.Add(200, ping, 200, []byte(`{"config":{"net":[{"id":"eth0","tap":"tapeth0"}]},"state":"Paused","device_tree":{"eth0":{"id":"eth0"}}}`), 500, []byte(`["Error from API","The network device could not be added to the VM","Error from device manager","Cannot create virtio-net device","Failed to open taps","Error related to the multiqueue support (no support device side)"]`), 204, []byte{})
	f.Add(200, []byte(`{}`), 200, []byte(`{"state":""}`), 200, []byte(`{"id":""}`), 200, []byte(`null`))
	f.Add(200, []byte("\x00garbage"), 200, []byte(`{"config":{"net":null},"state":"Running","device_tree":{"eth0":null}}`), 200, []byte(`[1,2`), 500, []byte("\xff\xfe"))
	f.Add(409, []byte(`{"fault_message":"x"}`), 200, []byte(`{"config":{"net":[{"id":7}]},"state":"Running"}`), 201, []byte(`{"id":"`+strings.Repeat("a", 4096)+`"}`), 500, []byte(`["a\nb","\u0000"]`))

	// Every endpoint gets the fuzzer's answer (404 when it has none).
	h := &vmmsim.Canned{
		Key:     func(r *http.Request) string { return strings.TrimPrefix(r.URL.Path, "/api/v1/") },
		Default: vmmsim.Answer{Status: 404},
	}
	sock := vmmsim.ServeUnix(f, "api.sock", h)
	opts := vmmadapter.Options{CallTimeout: 500 * time.Millisecond, RemoveTimeout: 30 * time.Millisecond}

	f.Fuzz(func(t *testing.T, pingStatus int, pingBody []byte, infoStatus int, infoBody []byte, addStatus int, addBody []byte, rmStatus int, rmBody []byte) {
		h.Set(map[string]vmmsim.Answer{
			"vmm.ping":         {Status: vmmsim.FuzzStatus(pingStatus), Body: pingBody},
			"vm.info":          {Status: vmmsim.FuzzStatus(infoStatus), Body: infoBody},
			"vm.add-net":       {Status: vmmsim.FuzzStatus(addStatus), Body: addBody},
			"vm.remove-device": {Status: vmmsim.FuzzStatus(rmStatus), Body: rmBody},
		})
		a, err := cloudhypervisor.New(sock, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()

		if in, err := a.Info(ctx); err == nil {
			if in.Kind != vmmadapter.CloudHypervisor || in.Version == "" {
				t.Errorf("Info = %+v without an error", in)
			}
		}
		if ids, err := a.NICs(ctx); err == nil && !ok2xx(infoStatus) && len(ids) > 0 {
			t.Errorf("NICs = %v from a refused vm.info (status %d)", ids, vmmsim.FuzzStatus(infoStatus))
		}
		nic := vmmadapter.NIC{ID: "eth0", Tap: "tapeth0", MAC: "02:00:00:00:00:01", MTU: 1500, QueuePairs: 1}
		att, err := a.AddNIC(ctx, nic)
		st := vmmsim.FuzzStatus(addStatus)
		switch {
		case err == nil && !(st >= 200 && st < 300):
			t.Errorf("AddNIC succeeded on status %d", st)
		case err == nil && st == 204 && att.ID != "eth0":
			t.Errorf("cold add answered 204 but the attachment is %+v", att)
		case err == nil && att.ID == "":
			t.Errorf("AddNIC succeeded without a device id: %+v", att)
		}
		_ = a.RemoveNIC(ctx, "eth0")
		if ctx.Err() != nil {
			t.Fatalf("calls outlived their deadline: %v", ctx.Err())
		}
	})
}

func ok2xx(s int) bool { s = vmmsim.FuzzStatus(s); return s >= 200 && s < 300 }

// FuzzNetArgs: a NIC the adapter accepts (Body succeeds) becomes exactly
// one --net value whose fields are the ones vmnic sets: nothing in a NIC's
// id, TAP or MAC can add a Cloud Hypervisor option of its own.
func FuzzNetArgs(f *testing.F) {
	f.Add("eth0", "tapeth0", "02:00:00:00:00:01", 1500, 1, 256)
	f.Add("x,vhost_user=on", "tap,socket=/x", "02:00=1", 0, 2, 0)
	f.Add("__x", "", "", -1, -1, -1)
	f.Fuzz(func(t *testing.T, id, tap, mac string, mtu, queues, qsize int) {
		nic := vmmadapter.NIC{ID: id, Tap: tap, MAC: mac, MTU: mtu, QueuePairs: queues, QueueSize: qsize}
		if _, err := cloudhypervisor.Body(nic); err != nil {
			return
		}
		args := cloudhypervisor.NetArgs([]vmmadapter.NIC{nic})
		if len(args) != 2 || args[0] != "--net" {
			t.Fatalf("NetArgs = %q", args)
		}
		allowed := map[string]bool{"tap": true, "mac": true, "mtu": true, "num_queues": true, "queue_size": true, "id": true}
		seen := map[string]bool{}
		for _, kv := range strings.Split(args[1], ",") {
			k, _, ok := strings.Cut(kv, "=")
			if !ok || !allowed[k] || seen[k] || strings.Count(kv, "=") != 1 {
				t.Fatalf("--net %q: field %q injected (id %q, tap %q, mac %q)", args[1], kv, id, tap, mac)
			}
			seen[k] = true
		}
	})
}
