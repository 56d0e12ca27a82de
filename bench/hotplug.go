package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/vmnic/vmnic/bench/internal/fixture"
	"github.com/vmnic/vmnic/bench/internal/stats"
	"github.com/vmnic/vmnic/bench/internal/timedexec"
	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/internal/testkit/qemuguest"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/connect"
)

// HotplugResult is the cost of a NIC hot-add into a running VMM.
type HotplugResult struct {
	VMMs []HotplugVMM `json:"vmms"`
}

// HotplugVMM is one VMM's figures. The chain is bridge + host-local + vmnic
// into a sandbox prepared beforehand (record at zero NICs, VMM attached).
type HotplugVMM struct {
	VMM     string `json:"vmm"`
	Samples int    `json:"samples"`
	// ChainAdd and ChainDel are the whole CNI ADD and DEL; vmnic's ADD
	// hot-adds the NIC and its DEL hot-removes it (waiting for the eject).
	ChainAdd stats.Summary `json:"chain_add"`
	ChainDel stats.Summary `json:"chain_del"`
	VmnicAdd stats.Summary `json:"vmnic_add"`
	VmnicDel stats.Summary `json:"vmnic_del"`
	// VMMStep is the "vmm-added" step of vmnic's ADD (the adapter call), when the
	// plugin records step times.
	VMMStep stats.Summary `json:"vmm_step"`
	// AdapterAdd and AdapterRemove are the adapter's AddNIC and RemoveNIC
	// called in-process, without the plugin around them.
	AdapterAdd    stats.Summary `json:"adapter_add"`
	AdapterRemove stats.Summary `json:"adapter_remove"`
	// GuestLink is from the start of the CNI ADD until the guest has the
	// interface (QEMU only).
	GuestLink  stats.Summary `json:"guest_link"`
	GuestBoot  time.Duration `json:"guest_boot_ns,omitempty"`
	Errors     int           `json:"errors"`
	FirstError string        `json:"first_error,omitempty"`
	Note       string        `json:"note,omitempty"`
}

type hotplugTarget struct {
	name   string
	kind   vmmadapter.Kind
	socket string
	guest  *qemuguest.Guest
	netns  *fixture.Netns // QEMU: the guest's (one sandbox for all samples)
}

// runHotplug measures vmnic's ADD/DEL with a VMM attached to the sandbox:
// none (the reference), the Cloud Hypervisor and Firecracker simulators,
// and a real QEMU guest under TCG.
func (e *env) runHotplug(ctx context.Context) error {
	if !e.hasVmnic {
		return skipf("the vmnic plugin is not built (bin/vmnic)")
	}
	simSamples, qemuSamples := 30, 5
	if e.cfg.Quick {
		simSamples, qemuSamples = 5, 2
	}
	state := e.stateDir("vmnic-state-hot")
	store, err := netsetup.Open(state)
	if err != nil {
		return err
	}
	m := sandbox.New(sandbox.Config{Store: store})
	list, err := e.confList("vmnb-hot", bridgePlugin("vmnbrb13", "10.205.13.0/24", e.dir("ipam")), vmnicPlugin(state))
	if err != nil {
		return err
	}
	defer deleteBridge("vmnbrb13")
	res := &HotplugResult{}

	// Simulators and the no-VMM reference, interleaved.
	ch, err := vmmsim.StartCH(e.dir("ch.sock"), vmmsim.CHConfig{State: vmmsim.CHRunning})
	if err != nil {
		return fmt.Errorf("start the Cloud Hypervisor simulator: %w", err)
	}
	defer ch.Close()
	fc, err := vmmsim.StartFC(e.dir("fc.sock"), vmmsim.FCConfig{Version: "1.16.1", PCI: true, State: vmmsim.FCRunning})
	if err != nil {
		return fmt.Errorf("start the Firecracker simulator: %w", err)
	}
	defer fc.Close()
	targets := []hotplugTarget{
		{name: "none (prepared sandbox, no VMM)"},
		{name: "Cloud Hypervisor simulator (v53, running)", kind: vmmadapter.CloudHypervisor, socket: ch.Socket()},
		{name: "Firecracker simulator (1.16.1, --enable-pci, running)", kind: vmmadapter.Firecracker, socket: fc.Socket()},
	}
	accs := make([]*hotAcc, len(targets))
	for i := range accs {
		accs[i] = &hotAcc{}
	}
	for s := 0; s < simSamples; s++ {
		for k := range targets {
			i := (k + s) % len(targets)
			if err := e.hotSample(ctx, m, list, targets[i], accs[i], fmt.Sprintf("vmnb-hot-%d-%d", i, s)); err != nil {
				return err
			}
		}
	}
	for i, t := range targets {
		if t.kind != "" {
			e.adapterSamples(ctx, t, accs[i], simSamples)
		}
		res.VMMs = append(res.VMMs, accs[i].result(t.name, e, ""))
	}

	// QEMU.
	if err := qemuguest.Available(); err != nil {
		res.VMMs = append(res.VMMs, HotplugVMM{VMM: "QEMU guest", Note: "not measured: " + err.Error()})
	} else {
		hv, err := e.hotplugQEMU(ctx, m, list, qemuSamples)
		if err != nil {
			return err
		}
		res.VMMs = append(res.VMMs, hv)
	}
	e.report.Hotplug = res
	return nil
}

type hotAcc struct {
	chainAdd, chainDel, vadd, vdel, vmm, aadd, arem, link []time.Duration
	errs                                                  []error
	calls                                                 []timedexec.Call
	boot                                                  time.Duration
}

func (a *hotAcc) fail(err error) { a.errs = append(a.errs, err) }

func (a *hotAcc) result(name string, e *env, note string) HotplugVMM {
	ix := e.loadSteps()
	for _, c := range a.calls {
		if c.Plugin != "vmnic" {
			continue
		}
		rec, ok := ix.find(c)
		switch c.Cmd {
		case "ADD":
			a.vadd = append(a.vadd, c.Duration())
			if ok {
				for _, st := range rec.Steps {
					if st.Name == "vmm-added" {
						a.vmm = append(a.vmm, time.Duration(st.NS))
					}
				}
			}
		case "DEL":
			a.vdel = append(a.vdel, c.Duration())
		}
		e.vmnicCalls = append(e.vmnicCalls, vmnicCall{context: "VMM: " + name, call: c, rec: rec, hasRec: ok})
	}
	hv := HotplugVMM{VMM: name, Samples: len(a.chainAdd), Note: note, GuestBoot: a.boot,
		ChainAdd: stats.Summarize(a.chainAdd), ChainDel: stats.Summarize(a.chainDel),
		VmnicAdd: stats.Summarize(a.vadd), VmnicDel: stats.Summarize(a.vdel), VMMStep: stats.Summarize(a.vmm),
		AdapterAdd: stats.Summarize(a.aadd), AdapterRemove: stats.Summarize(a.arem), GuestLink: stats.Summarize(a.link),
		Errors: len(a.errs)}
	if len(a.errs) > 0 {
		hv.FirstError = a.errs[0].Error()
	}
	return hv
}

// hotSample prepares a sandbox in a fresh netns, attaches the VMM (if any),
// times the chain ADD (vmnic hot-adds) and DEL (vmnic hot-removes), and
// tears the sandbox down.
func (e *env) hotSample(ctx context.Context, m *sandbox.Manager, list *libcni.NetworkConfigList, t hotplugTarget, a *hotAcc, id string) error {
	ns, err := fixture.NewNetns("hot")
	if err != nil {
		return err
	}
	defer ns.Delete()
	if _, err := m.Prepare(ctx, id, sandbox.PrepareOptions{NetnsPath: ns.Path}); err != nil {
		a.fail(fmt.Errorf("prepare: %w", err))
		return nil
	}
	defer m.Teardown(context.WithoutCancel(ctx), id, sandbox.TeardownOptions{})
	if t.kind != "" {
		if _, err := m.AttachVMM(ctx, id, t.kind, t.socket); err != nil {
			a.fail(fmt.Errorf("attach VMM: %w", err))
			return nil
		}
	}
	log := &timedexec.Log{}
	ifs := []string{"eth0"}
	add, err := e.add(ctx, list, id, ns.Path, ifs, log)
	if err != nil {
		a.fail(err)
	}
	if t.kind == vmmadapter.Firecracker && err == nil {
		// Firecracker tells the guest nothing: the VM manager records the
		// guest's release before the DEL (the simulated guest has none to
		// give up: it never rescanned).
		if _, aerr := m.AckGuestRelease(ctx, id, "eth0"); aerr != nil {
			a.fail(fmt.Errorf("guest-acked: %w", aerr))
		}
	}
	del, derr := e.del(ctx, list, id, ns.Path, ifs, log)
	if derr != nil {
		a.fail(derr)
	}
	if err == nil && derr == nil {
		a.chainAdd, a.chainDel = append(a.chainAdd, add), append(a.chainDel, del)
		a.calls = append(a.calls, log.Calls()...)
	}
	return nil
}

// adapterSamples times the adapter's AddNIC and RemoveNIC in-process.
func (e *env) adapterSamples(ctx context.Context, t hotplugTarget, a *hotAcc, n int) {
	ad, err := connect.Open(t.kind, t.socket, vmmadapter.Options{})
	if err != nil {
		a.fail(err)
		return
	}
	defer ad.Close()
	for i := 0; i < n; i++ {
		nic := vmmadapter.NIC{ID: fmt.Sprintf("vmnbdirect%d", i), Tap: fmt.Sprintf("vmnbdt%d", i), MAC: fmt.Sprintf("02:00:00:00:01:%02x", i%256)}
		t0 := time.Now()
		att, err := ad.AddNIC(ctx, nic)
		d := time.Since(t0)
		if err != nil {
			a.fail(fmt.Errorf("adapter AddNIC: %w", err))
			continue
		}
		a.aadd = append(a.aadd, d)
		t0 = time.Now()
		// The guest has let go (Firecracker removes a device only then).
		if err := ad.RemoveNIC(vmmadapter.WithGuestAcked(ctx), att.ID); err != nil {
			a.fail(fmt.Errorf("adapter RemoveNIC: %w", err))
			continue
		}
		a.arem = append(a.arem, time.Since(t0))
	}
}

// hotplugQEMU boots the test guest in a sandbox netns and hot-adds and
// removes eth0 through the CNI chain, timing until the guest sees it.
func (e *env) hotplugQEMU(ctx context.Context, m *sandbox.Manager, list *libcni.NetworkConfigList, samples int) (HotplugVMM, error) {
	const name = "QEMU guest (TCG, i440fx, ACPI PCI hot-plug)"
	a := &hotAcc{}
	ns, err := fixture.NewNetns("qemu")
	if err != nil {
		return HotplugVMM{}, err
	}
	defer ns.Delete()
	bctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	t0 := time.Now()
	g, err := qemuguest.Boot(bctx, qemuguest.Config{Netns: ns.Path, WorkDir: e.dir("qemu"), Logf: func(f string, args ...any) { e.logf(f, args...) }})
	if err != nil {
		return HotplugVMM{VMM: name, Errors: 1, FirstError: err.Error()}, nil
	}
	defer g.Close()
	a.boot = time.Since(t0)
	e.logf("hotplug: QEMU guest booted in %s", a.boot.Round(time.Millisecond))

	id := "vmnb-hot-qemu"
	if _, err := m.Prepare(ctx, id, sandbox.PrepareOptions{NetnsPath: ns.Path}); err != nil {
		return HotplugVMM{}, fmt.Errorf("prepare: %w", err)
	}
	defer m.Teardown(context.WithoutCancel(ctx), id, sandbox.TeardownOptions{})
	if _, err := m.AttachVMM(ctx, id, vmmadapter.QEMU, g.QMPSocket()); err != nil {
		return HotplugVMM{VMM: name, Errors: 1, FirstError: "attach VMM: " + err.Error()}, nil
	}
	ifs := []string{"eth0"}
	for s := 0; s < samples; s++ {
		sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		err := e.qemuSample(sctx, g, list, id, ns.Path, ifs, a)
		cancel()
		if err != nil {
			a.fail(err)
			break
		}
	}
	note := "guest link = CNI ADD start until the guest's /sys/class/net has the new interface (polled in the guest every 5 ms, seen over the serial console)"
	return a.result(name, e, note), nil
}

func (e *env) qemuSample(ctx context.Context, g *qemuguest.Guest, list *libcni.NetworkConfigList, id, netns string, ifs []string, a *hotAcc) error {
	// The guest waits for a second interface (lo is the first) in a tight
	// loop started before the ADD; its answer marks the link's arrival.
	wait := "i=0; while [ $(ls /sys/class/net | wc -l) -lt 2 ]; do usleep 5000; i=$((i+1)); [ $i -gt 12000 ] && exit 1; done; ls /sys/class/net"
	type answer struct {
		at  time.Time
		out string
		err error
	}
	got := make(chan answer, 1)
	go func() {
		out, err := g.Run(ctx, wait)
		got <- answer{time.Now(), out, err}
	}()
	time.Sleep(500 * time.Millisecond) // the loop is running in the guest by now
	log := &timedexec.Log{}
	t0 := time.Now()
	add, err := e.add(ctx, list, id, netns, ifs, log)
	if err != nil {
		return err
	}
	var ans answer
	select {
	case ans = <-got:
	case <-ctx.Done():
		return fmt.Errorf("guest never saw the hot-added NIC: %w", ctx.Err())
	}
	if ans.err != nil {
		return fmt.Errorf("guest never saw the hot-added NIC: %w", ans.err)
	}
	link := ans.at.Sub(t0)
	del, err := e.del(ctx, list, id, netns, ifs, log)
	if err != nil {
		return err
	}
	// The removal must be complete in the guest before the next sample.
	if _, err := g.Run(ctx, "i=0; while [ $(ls /sys/class/net | wc -l) -ge 2 ]; do usleep 5000; i=$((i+1)); [ $i -gt 12000 ] && exit 1; done"); err != nil {
		return fmt.Errorf("guest kept the removed NIC: %w", err)
	}
	a.chainAdd, a.chainDel, a.link = append(a.chainAdd, add), append(a.chainDel, del), append(a.link, link)
	a.calls = append(a.calls, log.Calls()...)
	e.logf("hotplug QEMU: chain ADD %s, guest link after %s (%s), chain DEL %s", add.Round(time.Millisecond),
		link.Round(time.Millisecond), strings.Join(strings.Fields(ans.out), " "), del.Round(time.Millisecond))
	return nil
}

func (r *Report) hotplugMarkdown(b *strings.Builder) {
	h := r.Hotplug
	fmt.Fprintf(b, "A sandbox is prepared in a fresh netns (record at zero NICs) and the VMM attached; then the CNI chain (bridge + host-local + vmnic) ADDs eth0 — vmnic hot-adds it — and DELs it — vmnic hot-removes it, waiting for the eject. The simulators run in the benchmark's process; \"adapter\" is the adapter's AddNIC/RemoveNIC called in-process, without the plugin.\n\n")
	b.WriteString("| VMM | samples | chain ADD median | chain ADD p90 | vmnic ADD exec | vmnic vmm step | adapter AddNIC | guest link | chain DEL median | vmnic DEL exec | adapter RemoveNIC | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	opt := func(s stats.Summary) string {
		if s.N == 0 {
			return "—"
		}
		return ms(s.Median)
	}
	for _, v := range h.VMMs {
		fmt.Fprintf(b, "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |\n", v.VMM, v.Samples, opt(v.ChainAdd), func() string {
			if v.ChainAdd.N == 0 {
				return "—"
			}
			return ms(v.ChainAdd.P90)
		}(), opt(v.VmnicAdd), opt(v.VMMStep), opt(v.AdapterAdd), opt(v.GuestLink), opt(v.ChainDel), opt(v.VmnicDel), opt(v.AdapterRemove), v.Errors)
	}
	for _, v := range h.VMMs {
		if v.GuestBoot > 0 {
			fmt.Fprintf(b, "\n%s booted in %.1f s.", v.VMM, v.GuestBoot.Seconds())
		}
		if v.Note != "" {
			fmt.Fprintf(b, "\n%s: %s.", v.VMM, v.Note)
		}
		if v.FirstError != "" {
			fmt.Fprintf(b, "\n%s first error: `%s`", v.VMM, v.FirstError)
		}
	}
	b.WriteString("\n")
}
