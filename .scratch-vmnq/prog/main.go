package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/qemu"
)

func main() {
	a, err := qemu.Open(os.Args[1], vmmadapter.Options{RemoveTimeout: 5 * time.Second})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	do := func(cmd string, args any) {
		var out json.RawMessage
		err := a.Execute(ctx, cmd, args, &out)
		fmt.Printf("%s %v -> %s err=%v\n", cmd, args, out, err)
	}
	fmt.Println(a.Info(ctx))
	att, err := a.AddNIC(ctx, vmmadapter.NIC{ID: "net0", Tap: "vmnqtap0", MAC: "02:00:00:00:00:01", MTU: 1400, QueuePairs: 2})
	fmt.Println("add", att, err)
	do("qom-list", map[string]any{"path": "/machine/peripheral"})
	do("qom-get", map[string]any{"path": "/machine/peripheral/net0", "property": "netdev"})
	fmt.Println(a.NICs(ctx))
	att, err = a.AddNIC(ctx, vmmadapter.NIC{ID: "net0", Tap: "vmnqtap0"})
	fmt.Println("add dup", att, err)
	att, err = a.AddNIC(ctx, vmmadapter.NIC{ID: "bad", Tap: "vmnqtap1", MAC: "02:00:00:00:00:01", QueueSize: 100})
	fmt.Println("add bad", att, err)
	do("qom-list", map[string]any{"path": "/machine/peripheral"})
	t0 := time.Now()
	fmt.Println("remove prelaunch", a.RemoveNIC(ctx, "net0"), time.Since(t0))
	fmt.Println(a.NICs(ctx))
	fmt.Println("remove unknown", a.RemoveNIC(ctx, "nope"))
}
