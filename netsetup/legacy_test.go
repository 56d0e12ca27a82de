package netsetup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "testdata", "netsetup", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestDecodeEveryRecordShape(t *testing.T) {
	tests := []struct {
		file        string
		wantID      string
		wantLegacy  int
		wantBackend Backend
		wantNetns   string
		wantBridge  string
		wantIfnames []string
		check       func(t *testing.T, s *NetSetup)
	}{
		{
			file: "schema0-cocoon-vm.json", wantID: "vm-cocoon-1", wantLegacy: 0, wantBackend: BackendCNI,
			wantNetns: "/var/run/netns/cocoon-vm-cocoon-1", wantIfnames: []string{"eth0", "eth1"},
			check: func(t *testing.T, s *NetSetup) {
				if s.VMM == nil || s.VMM.Kind != "cloud-hypervisor" || !s.VMM.Booted {
					t.Errorf("VMM from the cocoon VM record = %+v", s.VMM)
				}
				eth0 := s.NetworkConfigs[0]
				if len(eth0.IPs) != 1 || eth0.IPs[0] != "10.88.0.5/16" || eth0.Gateway != "10.88.0.1" {
					t.Errorf("eth0 IP config = %v gw %q", eth0.IPs, eth0.Gateway)
				}
				if eth0.State != NICAttached || eth0.QueuePairs() != 2 || eth0.QueueSize != 512 {
					t.Errorf("eth0 = %+v", eth0)
				}
				if s.NetworkConfigs[1].IPs != nil {
					t.Errorf("a null network (DHCP) must give no IPs: %v", s.NetworkConfigs[1].IPs)
				}
			},
		},
		{
			file: "schema1-bridge.json", wantID: "sb-bridge-1", wantLegacy: 1, wantBackend: BackendBridge,
			wantBridge: "br-vm", wantIfnames: []string{"eth0", "net1"},
			check: func(t *testing.T, s *NetSetup) {
				if s.NetworkConfigs[0].Tap != "vmtbr0" {
					t.Errorf("NIC 0 after sorting must be eth0's tap vmtbr0, got %s", s.NetworkConfigs[0].Tap)
				}
			},
		},
		{
			file: "schema1-cni-empty-backend.json", wantID: "sb-cni-1", wantLegacy: 1, wantBackend: BackendCNI,
			wantNetns: "/var/run/netns/cni-1234", wantIfnames: []string{"eth0"},
			check: func(t *testing.T, s *NetSetup) {
				if s.PodName != "vm-pod" || s.Phase != PhaseConfigured {
					t.Errorf("pod name %q phase %s", s.PodName, s.Phase)
				}
			},
		},
		{
			file: "schema2-configured.json", wantID: "sb-v2-1", wantLegacy: 0, wantBackend: BackendCNI,
			wantNetns: "/var/run/netns/vmnic-sb-v2-1", wantIfnames: []string{"eth0", "net2", "net10"},
			check: func(t *testing.T, s *NetSetup) {
				eth0 := s.NetworkConfigs[0]
				if len(eth0.IPs) != 2 || eth0.DNS == nil || eth0.DNS.Nameservers[0] != "10.96.0.10" || eth0.BDF != "0000:00:05.0" {
					t.Errorf("eth0 = %+v", eth0)
				}
				if !s.NetnsOwned || s.VMM == nil || s.VMM.APISocket == "" {
					t.Errorf("sandbox fields lost: owned=%v vmm=%+v", s.NetnsOwned, s.VMM)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			s, err := Decode(fixture(t, tc.file), "from-file-name")
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if s.SandboxID != tc.wantID {
				t.Errorf("sandbox id = %q, want %q", s.SandboxID, tc.wantID)
			}
			if s.LegacySchema() != tc.wantLegacy {
				t.Errorf("LegacySchema = %d, want %d", s.LegacySchema(), tc.wantLegacy)
			}
			if got := s.ResolvedNetBackend(); got != tc.wantBackend {
				t.Errorf("ResolvedNetBackend = %q, want %q", got, tc.wantBackend)
			}
			if got := s.ResolvedNetnsPath(); got != tc.wantNetns {
				t.Errorf("ResolvedNetnsPath = %q, want %q", got, tc.wantNetns)
			}
			if got := s.ResolvedNetBridgeDev(); got != tc.wantBridge {
				t.Errorf("ResolvedNetBridgeDev = %q, want %q", got, tc.wantBridge)
			}
			var names []string
			for _, n := range s.NetworkConfigs {
				names = append(names, n.IfName)
			}
			if strings.Join(names, ",") != strings.Join(tc.wantIfnames, ",") {
				t.Errorf("NIC order = %v, want %v", names, tc.wantIfnames)
			}
			if err := s.Validate(); err != nil {
				t.Errorf("a decoded record must validate: %v", err)
			}
			tc.check(t, s)
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	tests := []struct {
		name, data, want string
	}{
		{"future schema", string(fixture(t, "schema3-future.json")), "newer than this vmnic understands"},
		{"negative schema", `{"schema": -1}`, "not valid"},
		{"not json", `{"schema": 2,`, "decode record"},
		{"wrong type", `{"schema": 2, "network_configs": {}}`, "decode schema 2 record"},
		{"legacy bad network", `{"schema": 1, "network_configs": [{"network": 5}]}`, "NIC 0: network"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte(tc.data), "x")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestResolvedFallbacksOnEmptyRecord(t *testing.T) {
	s := &NetSetup{}
	if s.ResolvedNetBackend() != BackendCNI || s.ResolvedNetnsPath() != "" || s.ResolvedNetBridgeDev() != "" {
		t.Fatalf("empty record: backend %q netns %q bridge %q", s.ResolvedNetBackend(), s.ResolvedNetnsPath(), s.ResolvedNetBridgeDev())
	}
	s.NetBackend = BackendBridge
	s.NetworkConfigs = []NIC{{LegacyBackend: BackendCNI}}
	if s.ResolvedNetBackend() != BackendBridge {
		t.Fatal("the sandbox-level backend must win over NIC 0's")
	}
}
