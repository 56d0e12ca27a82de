package qemuguest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// SaveTo stops the guest (QMP stop) and migrates its state into file
// (migrate "exec:cat > file", which Debian's QEMU 7.2 supports), waiting
// until the migration is completed. The guest stays stopped; restore it
// with a new QEMU started with -incoming "exec:cat file" (Boot with
// Prelaunch and the restore arguments in ExtraArgs, then StartRestored).
func (g *Guest) SaveTo(ctx context.Context, file string) error {
	if _, err := g.QMP(ctx, "stop", nil); err != nil {
		return fmt.Errorf("save guest: stop: %w", err)
	}
	if _, err := g.QMP(ctx, "migrate", map[string]any{"uri": "exec:cat > " + shellQuote(file)}); err != nil {
		return fmt.Errorf("save guest: migrate: %w", err)
	}
	return g.waitMigration(ctx, "completed")
}

// waitMigration polls query-migrate until the status is want (a failed
// migration is an error).
func (g *Guest) waitMigration(ctx context.Context, want string) error {
	return g.poll(ctx, "migration "+want, func() (bool, error) {
		raw, err := g.QMP(ctx, "query-migrate", nil)
		if err != nil {
			return false, err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return false, err
		}
		if st.Status == "failed" {
			return false, fmt.Errorf("migration failed: %s", st.ErrorDesc)
		}
		return st.Status == want, nil
	})
}

// StartRestored lets a guest restored from an incoming migration run: it
// waits until the incoming state is loaded (the run state leaves
// "inmigrate"), sends cont, and checks that the guest's console shell (the
// one that ran before the save) answers.
func (g *Guest) StartRestored(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.BootTimeout)
	defer cancel()
	err := g.poll(ctx, "incoming migration loaded", func() (bool, error) {
		raw, err := g.QMP(ctx, "query-status", nil)
		if err != nil {
			return false, err
		}
		var st struct {
			Status string `json:"status"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return false, err
		}
		return st.Status != "inmigrate", nil
	})
	if err != nil {
		return fmt.Errorf("start restored guest: %w%s", err, g.diag())
	}
	g.started = time.Now()
	if _, err := g.QMP(ctx, "cont", nil); err != nil {
		return fmt.Errorf("start restored guest: cont: %w", err)
	}
	out, err := g.Run(ctx, "echo shell-ok")
	if err != nil || strings.TrimSpace(out) != "shell-ok" {
		return fmt.Errorf("start restored guest: console shell: %q %v%s", out, err, g.diag())
	}
	g.cfg.Logf("qemuguest: restored guest runs again after %s", time.Since(g.started).Round(time.Millisecond))
	return nil
}
