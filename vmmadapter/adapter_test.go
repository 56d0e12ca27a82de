package vmmadapter_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/vmnic/vmnic/vmmadapter"
)

func TestOptionsWithDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   vmmadapter.Options
		want vmmadapter.Options
	}{
		{"zero", vmmadapter.Options{}, vmmadapter.Options{CallTimeout: 5 * time.Second, RemoveTimeout: 30 * time.Second}},
		{"negative", vmmadapter.Options{CallTimeout: -1, RemoveTimeout: -time.Second}, vmmadapter.Options{CallTimeout: 5 * time.Second, RemoveTimeout: 30 * time.Second}},
		{"set", vmmadapter.Options{CallTimeout: time.Second, RemoveTimeout: 2 * time.Second, PCI: vmmadapter.PCIEnabled},
			vmmadapter.Options{CallTimeout: time.Second, RemoveTimeout: 2 * time.Second, PCI: vmmadapter.PCIEnabled}},
		{"one set", vmmadapter.Options{RemoveTimeout: time.Minute, PCI: vmmadapter.PCIDisabled},
			vmmadapter.Options{CallTimeout: 5 * time.Second, RemoveTimeout: time.Minute, PCI: vmmadapter.PCIDisabled}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.in.WithDefaults(); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("%+v.WithDefaults() = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}
