package qemuguest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// qmpCommand runs one QMP command on a fresh connection to socket (the
// harness's private monitor, so it never competes with the adapter under
// test for the public one). Everything is bounded by ctx.
func qmpCommand(ctx context.Context, socket, cmd string, args any) (json.RawMessage, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	dec := json.NewDecoder(c)
	enc := json.NewEncoder(c)
	type msg struct {
		QMP    json.RawMessage `json:"QMP"`
		Return json.RawMessage `json:"return"`
		Error  *struct{ Class, Desc string }
		Event  string `json:"event"`
		ID     string `json:"id"`
	}
	var greet msg
	if err := dec.Decode(&greet); err != nil || greet.QMP == nil {
		return nil, fmt.Errorf("qmp %s: no greeting: %v", cmd, err)
	}
	send := func(id, cmd string, args any) (json.RawMessage, error) {
		req := map[string]any{"execute": cmd, "id": id}
		if args != nil {
			req["arguments"] = args
		}
		if err := enc.Encode(req); err != nil {
			return nil, err
		}
		for {
			var m msg
			if err := dec.Decode(&m); err != nil {
				return nil, err
			}
			if m.Event != "" || m.ID != id {
				continue
			}
			if m.Error != nil {
				return nil, fmt.Errorf("%s: %s", m.Error.Class, m.Error.Desc)
			}
			return m.Return, nil
		}
	}
	if _, err := send("cap", "qmp_capabilities", nil); err != nil {
		return nil, fmt.Errorf("qmp qmp_capabilities: %w", err)
	}
	ret, err := send("cmd", cmd, args)
	if err != nil {
		if errors.Is(err, net.ErrClosed) && cmd == "quit" {
			return nil, nil
		}
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	return ret, nil
}
