//go:build !vmnic_failpoints

package failpoint

import "testing"

// In a normal build nothing arms a failpoint, whatever the environment says.
func TestOffIgnoresEnvironment(t *testing.T) {
	t.Setenv(Env, "tap-created=error,bogus")
	if Enabled {
		t.Fatal("Enabled is true in a build without the vmnic_failpoints tag")
	}
	for _, name := range append(Names(), "not-registered") {
		if err := Inject(name); err != nil {
			t.Errorf("Inject(%q) = %v in a normal build", name, err)
		}
	}
}

// Inject must cost nothing in production: no allocation, no lookup.
func BenchmarkInjectOff(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_ = Inject("tap-created")
	}
}
