package netsetup

import (
	"os"
	"testing"
)

func TestLegacyFixturesLoadThroughTheStore(t *testing.T) {
	for _, name := range []string{"schema0-cocoon-vm.json", "schema1-bridge.json", "schema1-cni-empty-backend.json", "schema2-configured.json"} {
		s := openStore(t)
		data := fixture(t, name)
		rec, err := Decode(data, "legacy-1")
		if err != nil {
			t.Fatal(err)
		}
		id := rec.SandboxID
		if err := os.WriteFile(s.Path(id), data, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(id)
		if err != nil {
			t.Errorf("%s: Get = %v", name, err)
			continue
		}
		if q, _ := s.Quarantine(); len(q) != 0 || got.SandboxID != id {
			t.Errorf("%s: quarantined %v", name, q)
		}
	}
}
