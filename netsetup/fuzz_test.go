package netsetup

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecode feeds records of every schema (seeded from testdata/netsetup)
// and mutations of them to Decode. A record that decodes must validate or be
// refused by Validate with an error, must survive a save/load round trip
// unchanged, and nothing may panic.
func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("..", "testdata", "netsetup", "*.json"))
	for _, p := range files {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte(`{"schema":1,"network_configs":[{"network":"x"}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := Decode(data, "fuzz")
		if err != nil {
			return
		}
		if rec.Schema != SchemaVersion && rec.LegacySchema() == 0 {
			t.Fatalf("decoded a record with schema %d", rec.Schema)
		}
		_ = rec.ResolvedNetBackend()
		_ = rec.ResolvedNetnsPath()
		_ = rec.ResolvedNetBridgeDev()
		if rec.Validate() != nil {
			return
		}
		rec.Schema = SchemaVersion
		out, err := json.Marshal(rec)
		if err != nil {
			t.Fatalf("marshal a valid record: %v", err)
		}
		again, err := Decode(out, "fuzz")
		if err != nil {
			t.Fatalf("a record this package wrote does not decode: %v\n%s", err, out)
		}
		out2, _ := json.Marshal(again)
		if string(out) != string(out2) {
			t.Fatalf("round trip changed the record:\n%s\n%s", out, out2)
		}
	})
}
