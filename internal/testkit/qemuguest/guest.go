// Package qemuguest boots a real QEMU guest (TCG, Debian's kernel, a busybox
// initramfs with the virtio-net modules) for tests and the demo, and drives
// it through its serial console.
//
//	g, err := qemuguest.Boot(ctx, qemuguest.Config{Netns: "/var/run/netns/x"})
//	defer g.Close()
//	// hot-add a NIC through g.QMPSocket() (vmmadapter/qemu), then:
//	err = g.WaitForLink(ctx, "eth0")
//	out, err := g.Run(ctx, "ip addr add 10.0.0.2/24 dev eth0 && ping -c 1 -W 2 10.0.0.1")
//
// The guest starts with no NIC (-nic none). QEMU runs inside Config.Netns, so
// TAPs named in netdev_add are looked up there. The public QMP socket
// (QMPSocket) is left to the code under test; the harness keeps a second,
// private QMP socket for Start and Close.
package qemuguest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// Config describes the guest to boot. Zero values mean the defaults.
type Config struct {
	Netns       string        // netns path QEMU runs in; "" = the caller's
	WorkDir     string        // sockets and logs; "" = a temp dir removed by Close
	CacheDir    string        // initramfs cache; "" = DefaultCacheDir()
	QMPSocket   string        // public QMP socket; "" = <WorkDir>/qmp.sock
	MemoryMB    int           // default 256
	CPUs        int           // default 1
	BootTimeout time.Duration // until the console shell answers; default 90 s
	Machine     string        // default "pc" (i440fx, ACPI PCI hotplug on pci.0)
	Kernel      string        // "" = newest /boot/vmlinuz-* with a module tree
	Busybox     string        // default /bin/busybox (must be static: busybox-static)
	QEMU        string        // default qemu-system-x86_64 from PATH
	KernelArgs  string        // appended to the kernel command line
	ExtraArgs   []string      // appended to the QEMU command line (e.g. qemu.Args(nics))
	// ExtraFiles are added to the initramfs (a second archive, not cached);
	// executables in etc/vmnic-init.d run at boot (see File).
	ExtraFiles []File
	// Prelaunch starts QEMU with -S: Boot returns once QMP is up and the
	// guest has not run yet (NICs added now are cold-plugged); Start runs it.
	Prelaunch bool
	// RunAs, when set, runs QEMU as an unprivileged user: that uid/gid, no
	// supplementary groups, no capabilities (inheritable, ambient and
	// bounding sets cleared, no_new_privs; setpriv), and in a mount
	// namespace of its own where /dev/net is an empty tmpfs, so it cannot
	// open /dev/net/tun at all. Such a QEMU can only use TAPs it is handed
	// as fds. WorkDir is given to the user (sockets are made there).
	RunAs *User
	// Launcher, when set, is a command QEMU's command line is appended to
	// (e.g. "vmnicctl exec-vmm <id> --kind qemu --"): it starts QEMU
	// (under RunAs's wrapper when set) and may add arguments of its own.
	// PID is then the launcher's.
	Launcher []string
	// Logf, when set, gets progress lines (boot time, …), e.g. t.Logf.
	Logf func(format string, args ...any)
	// Console, when set, also gets the serial console output as it comes
	// (CRs removed), e.g. os.Stderr for a demo.
	Console io.Writer
}

// User is a uid/gid to run QEMU as (Config.RunAs).
type User struct{ UID, GID int }

// unprivileged wraps QEMU's command line so that it runs as u with no
// privilege and no /dev/net/tun: unshare(1) gives it a private mount
// namespace, a tmpfs hides /dev/net there, and setpriv(1) drops the uid,
// gid, groups and every capability before exec'ing QEMU. unshare and
// setpriv exec in place, so the process is QEMU's own (same pid).
// setpriv re-arms the parent-death signal, which a credential change
// clears.
func unprivileged(u User, qemu string, args []string) (string, []string) {
	script := fmt.Sprintf("mount -t tmpfs -o size=4k,mode=0755 vmnic-no-tun /dev/net && "+
		"exec setpriv --reuid=%d --regid=%d --clear-groups --inh-caps=-all --ambient-caps=-all --bounding-set=-all "+
		"--no-new-privs --pdeathsig=SIGKILL -- \"$0\" \"$@\"", u.UID, u.GID)
	return "unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c", script, qemu}, args...)
}

// DefaultCacheDir is where initramfs archives are cached: $VMNIC_TOOLS/guest,
// else .tools/guest in the enclosing vmnic checkout, else a temp directory.
func DefaultCacheDir() string {
	if d := os.Getenv("VMNIC_TOOLS"); d != "" {
		return filepath.Join(d, "guest")
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil {
				if bytes.Contains(b, []byte("module github.com/vmnic/vmnic\n")) {
					return filepath.Join(d, ".tools", "guest")
				}
				break
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return filepath.Join(os.TempDir(), "vmnic-testguest")
}

// Available reports why a guest cannot be booted here (nil when it can):
// missing qemu-system-x86_64, kernel, module tree or static busybox.
func Available() error {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return fmt.Errorf("qemu-system-x86_64 not installed (Debian package qemu-system-x86): %w", err)
	}
	k, err := findKernel("")
	if err != nil {
		return err
	}
	f, err := os.Open(k.Image)
	if err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	f.Close()
	if _, err := findModules(k.Modules); err != nil {
		return err
	}
	return checkStatic("/bin/busybox")
}

// Guest is a running QEMU guest.
type Guest struct {
	cfg       Config
	cmd       *exec.Cmd
	stdin     io.WriteCloser
	con       *console
	workDir   string
	ownsWork  bool
	qmpSocket string
	ctlSocket string
	logPath   string
	started   time.Time // QEMU start, or Start for a prelaunch guest
	bootTime  time.Duration

	exited  chan struct{} // closed when QEMU has exited
	waitErr error

	runMu     sync.Mutex
	closeOnce sync.Once
	closeErr  error
}

func (c *Config) setDefaults() {
	if c.MemoryMB <= 0 {
		c.MemoryMB = 256
	}
	if c.CPUs <= 0 {
		c.CPUs = 1
	}
	if c.BootTimeout <= 0 {
		c.BootTimeout = 90 * time.Second
	}
	if c.Machine == "" {
		c.Machine = "pc"
	}
	if c.Busybox == "" {
		c.Busybox = "/bin/busybox"
	}
	if c.QEMU == "" {
		c.QEMU = "qemu-system-x86_64"
	}
	if c.CacheDir == "" {
		c.CacheDir = DefaultCacheDir()
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// Boot starts QEMU and waits (bounded by ctx and Config.BootTimeout) until
// the guest's console shell answers; with Config.Prelaunch it returns as
// soon as QMP answers. On error nothing is left running.
func Boot(ctx context.Context, cfg Config) (_ *Guest, err error) {
	cfg.setDefaults()
	k, err := findKernel(cfg.Kernel)
	if err != nil {
		return nil, fmt.Errorf("boot guest: %w", err)
	}
	initrd, err := initramfs(cfg.CacheDir, cfg.Busybox, k)
	if err != nil {
		return nil, fmt.Errorf("boot guest: %w", err)
	}
	g := &Guest{cfg: cfg, exited: make(chan struct{})}
	g.workDir = cfg.WorkDir
	if g.workDir == "" {
		if g.workDir, err = os.MkdirTemp("", "vmnic-guest-"); err != nil {
			return nil, fmt.Errorf("boot guest: %w", err)
		}
		g.ownsWork = true
	} else if err := os.MkdirAll(g.workDir, 0o755); err != nil {
		return nil, fmt.Errorf("boot guest: %w", err)
	}
	defer func() {
		if err != nil {
			g.Close()
		}
	}()
	if initrd, err = withExtraFiles(initrd, g.workDir, cfg.ExtraFiles); err != nil {
		return nil, fmt.Errorf("boot guest: %w", err)
	}
	g.qmpSocket = cfg.QMPSocket
	if g.qmpSocket == "" {
		g.qmpSocket = filepath.Join(g.workDir, "qmp.sock")
	}
	g.ctlSocket = filepath.Join(g.workDir, "ctl.sock")
	g.logPath = filepath.Join(g.workDir, "console.log")
	for _, s := range []string{g.qmpSocket, g.ctlSocket} {
		if len(s) >= 108 {
			return nil, fmt.Errorf("boot guest: socket path too long for a unix socket: %s", s)
		}
		os.Remove(s)
	}

	logFile, err := os.Create(g.logPath)
	if err != nil {
		return nil, fmt.Errorf("boot guest: %w", err)
	}
	g.con = newConsole(logFile, cfg.Console)
	stderrPath := filepath.Join(g.workDir, "qemu.stderr")
	stderr, err := os.Create(stderrPath)
	if err != nil {
		return nil, fmt.Errorf("boot guest: %w", err)
	}
	defer stderr.Close()

	cmdline := "console=ttyS0 panic=-1 quiet loglevel=1 8250.nr_uarts=1"
	if cfg.KernelArgs != "" {
		cmdline += " " + cfg.KernelArgs
	}
	args := []string{
		"-machine", cfg.Machine, "-accel", "tcg",
		"-m", strconv.Itoa(cfg.MemoryMB), "-smp", strconv.Itoa(cfg.CPUs),
		"-display", "none", "-nodefaults", "-no-user-config", "-nic", "none", "-no-reboot",
		"-kernel", k.Image, "-initrd", initrd, "-append", cmdline,
		"-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
		"-qmp", "unix:" + g.qmpSocket + ",server=on,wait=off",
		"-qmp", "unix:" + g.ctlSocket + ",server=on,wait=off",
	}
	if cfg.Prelaunch {
		args = append(args, "-S")
	}
	args = append(args, cfg.ExtraArgs...)
	bin := cfg.QEMU
	if cfg.RunAs != nil {
		for _, tool := range []string{"unshare", "setpriv"} {
			if _, err := exec.LookPath(tool); err != nil {
				return nil, fmt.Errorf("boot guest: run QEMU unprivileged: %s (util-linux) not found: %w", tool, err)
			}
		}
		if err := os.Chown(g.workDir, cfg.RunAs.UID, cfg.RunAs.GID); err != nil {
			return nil, fmt.Errorf("boot guest: give the work dir to uid %d: %w", cfg.RunAs.UID, err)
		}
		bin, args = unprivileged(*cfg.RunAs, cfg.QEMU, args)
	}
	if len(cfg.Launcher) > 0 {
		args = append(append(append([]string{}, cfg.Launcher[1:]...), bin), args...)
		bin = cfg.Launcher[0]
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = stderr
	// QEMU dies with us (see start).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if g.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, fmt.Errorf("boot guest: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("boot guest: %w", err)
	}
	if err := g.start(cmd, cfg.Netns); err != nil {
		return nil, fmt.Errorf("boot guest: start %s: %w", cfg.QEMU, err)
	}
	g.cmd = cmd
	g.started = time.Now()
	go g.con.readFrom(stdout)
	cfg.Logf("qemuguest: started QEMU pid %d (kernel %s, netns %q)", cmd.Process.Pid, k.Version, cfg.Netns)

	bctx, cancel := context.WithTimeout(ctx, cfg.BootTimeout)
	defer cancel()
	if err := g.waitQMP(bctx); err != nil {
		return nil, fmt.Errorf("boot guest: %w%s", err, g.diag())
	}
	if cfg.Prelaunch {
		return g, nil
	}
	if err := g.waitShell(bctx); err != nil {
		return nil, fmt.Errorf("boot guest: %w%s", err, g.diag())
	}
	return g, nil
}

// start runs cmd on an OS thread of its own, locked for QEMU's lifetime:
// the thread enters netns nsPath (when set) before forking, so QEMU is born
// in it, and then waits for QEMU. Pdeathsig is tied to the thread that
// forked, so QEMU is killed if this process dies, but not when some other
// goroutine happens to retire a borrowed thread.
func (g *Guest) start(cmd *exec.Cmd, nsPath string) error {
	var target netns.NsHandle = -1
	if nsPath != "" {
		var err error
		if target, err = netns.GetFromPath(nsPath); err != nil {
			return fmt.Errorf("open netns %s: %w", nsPath, err)
		}
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine, after QEMU.
		runtime.LockOSThread()
		if target != -1 {
			err := netns.Set(target)
			target.Close()
			if err != nil {
				errc <- fmt.Errorf("enter netns %s: %w", nsPath, err)
				return
			}
		}
		if err := cmd.Start(); err != nil {
			errc <- err
			return
		}
		errc <- nil
		g.waitErr = cmd.Wait()
		close(g.exited)
	}()
	return <-errc
}

// waitQMP waits until the private QMP socket answers.
func (g *Guest) waitQMP(ctx context.Context) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := qmpCommand(cctx, g.ctlSocket, "query-status", nil)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-g.exited:
			return fmt.Errorf("QEMU exited: %v", g.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("QMP socket %s not answering: %v: %w", g.ctlSocket, err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitShell waits for /init's ready marker, then for the console shell.
func (g *Guest) waitShell(ctx context.Context) error {
	err := g.con.wait(ctx, g.exited, func(buf []byte) (int, bool) {
		i := bytes.Index(buf, []byte(readyMarker+"\n"))
		if i < 0 {
			return 0, false
		}
		return i + len(readyMarker) + 1, true
	})
	if err != nil {
		return fmt.Errorf("guest init did not get ready: %w", err)
	}
	out, err := g.Run(ctx, "echo shell-ok")
	if err != nil {
		return fmt.Errorf("guest console shell: %w", err)
	}
	if strings.TrimSpace(out) != "shell-ok" {
		return fmt.Errorf("guest console shell: unexpected output %q", out)
	}
	g.bootTime = time.Since(g.started)
	g.cfg.Logf("qemuguest: guest booted in %s", g.bootTime.Round(time.Millisecond))
	return nil
}

// Start lets a Prelaunch guest run (QMP cont) and waits for its shell,
// bounded by ctx and Config.BootTimeout.
func (g *Guest) Start(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.BootTimeout)
	defer cancel()
	g.started = time.Now()
	if _, err := qmpCommand(ctx, g.ctlSocket, "cont", nil); err != nil {
		return fmt.Errorf("start guest: %w", err)
	}
	if err := g.waitShell(ctx); err != nil {
		return fmt.Errorf("start guest: %w%s", err, g.diag())
	}
	return nil
}

// QMPSocket is the public QMP socket (for the adapter under test). QEMU
// serves one client per QMP socket at a time: while an adapter holds it,
// another client gets no greeting. Tests that want to look at QEMU next to
// the code under test use QMP instead.
func (g *Guest) QMPSocket() string { return g.qmpSocket }

// QMP runs one command on the harness's private QMP socket (not the public
// one) and returns its raw return value; bounded by ctx.
func (g *Guest) QMP(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return qmpCommand(ctx, g.ctlSocket, cmd, args)
}

// PID is QEMU's process id.
func (g *Guest) PID() int { return g.cmd.Process.Pid }

// WorkDir holds the sockets and logs (console.log, qemu.stderr).
func (g *Guest) WorkDir() string { return g.workDir }

// BootTime is how long the guest took from QEMU start (or Start) until its
// shell answered.
func (g *Guest) BootTime() time.Duration { return g.bootTime }

// Exited reports whether QEMU has exited.
func (g *Guest) Exited() bool {
	select {
	case <-g.exited:
		return true
	default:
		return false
	}
}

// ConsoleTail returns the last few KiB of the serial console.
func (g *Guest) ConsoleTail() string { return g.con.Tail() }

// diag is appended to errors: the console tail and QEMU's stderr.
func (g *Guest) diag() string {
	var b strings.Builder
	if g.con != nil {
		fmt.Fprintf(&b, "\n--- guest console (tail) ---\n%s", lastLines(g.con.Tail(), 40))
	}
	if st, err := os.ReadFile(filepath.Join(g.workDir, "qemu.stderr")); err == nil && len(st) > 0 {
		fmt.Fprintf(&b, "\n--- qemu stderr ---\n%s", lastLines(string(st), 20))
	}
	return b.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ExitError is returned by Run when the command exits non-zero.
type ExitError struct {
	Cmd    string
	Code   int
	Output string
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("guest command %q exited %d: %s", e.Cmd, e.Code, strings.TrimSpace(e.Output))
}

// maxCommand keeps a command line below the tty's 4096-byte line limit.
const maxCommand = 3500

// Run runs a shell command in the guest (busybox sh, stdin /dev/null,
// stderr merged into stdout) and returns its output. A non-zero exit is an
// *ExitError carrying the output. If ctx ends first the command is
// interrupted (^C) and the error includes the console tail.
func (g *Guest) Run(ctx context.Context, command string) (string, error) {
	if len(command) > maxCommand {
		return "", fmt.Errorf("guest command too long (%d bytes, max %d)", len(command), maxCommand)
	}
	g.runMu.Lock()
	defer g.runMu.Unlock()
	var rb [6]byte
	rand.Read(rb[:])
	tok := hex.EncodeToString(rb[:])
	startMark := []byte("@@" + tok + "@@S\n")
	endMark := []byte("@@" + tok + "@@E ")
	// The markers are split by quotes in the command text, so an echo of
	// the input can never be taken for them.
	line := fmt.Sprintf("echo '@@'\"%s@@S\"; ( %s\n) </dev/null 2>&1; echo '@@'\"%s@@E $?\"\n", tok, command, tok)
	if _, err := g.stdin.Write([]byte(line)); err != nil {
		return "", fmt.Errorf("guest command %q: write console: %w", command, err)
	}
	var out string
	code := -1
	err := g.con.wait(ctx, g.exited, func(buf []byte) (int, bool) {
		s := bytes.Index(buf, startMark)
		if s < 0 {
			return 0, false
		}
		body := buf[s+len(startMark):]
		e := bytes.Index(body, endMark)
		if e < 0 {
			return 0, false
		}
		nl := bytes.IndexByte(body[e:], '\n')
		if nl < 0 {
			return 0, false
		}
		c, perr := strconv.Atoi(strings.TrimSpace(string(body[e+len(endMark) : e+nl])))
		if perr != nil {
			c = -1
		}
		out, code = string(body[:e]), c
		return s + len(startMark) + e + nl + 1, true
	})
	if err != nil {
		if ctx.Err() != nil {
			g.stdin.Write([]byte{3}) // ^C the stuck command
		}
		return "", fmt.Errorf("guest command %q: %w%s", command, err, g.diag())
	}
	if code != 0 {
		return out, &ExitError{Cmd: command, Code: code, Output: out}
	}
	return out, nil
}

// poll runs check every interval until it reports done, returns an error
// that is not an *ExitError, or ctx ends.
func (g *Guest) poll(ctx context.Context, what string, check func() (bool, error)) error {
	for {
		done, err := check()
		var ee *ExitError
		if err != nil && !errors.As(err, &ee) {
			return err
		}
		if done && err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w%s", what, ctx.Err(), g.diag())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// WaitForLink waits until the guest has a network interface name.
func (g *Guest) WaitForLink(ctx context.Context, name string) error {
	return g.poll(ctx, "wait for guest link "+name, func() (bool, error) {
		_, err := g.Run(ctx, "test -e /sys/class/net/"+shellQuote(name))
		return err == nil, err
	})
}

// WaitForLinkGone waits until the guest no longer has interface name.
func (g *Guest) WaitForLinkGone(ctx context.Context, name string) error {
	return g.poll(ctx, "wait for guest link "+name+" to go", func() (bool, error) {
		_, err := g.Run(ctx, "! test -e /sys/class/net/"+shellQuote(name))
		return err == nil, err
	})
}

// LinkMAC returns the MAC address of a guest interface.
func (g *Guest) LinkMAC(ctx context.Context, name string) (string, error) {
	out, err := g.Run(ctx, "cat /sys/class/net/"+shellQuote(name)+"/address")
	return strings.TrimSpace(out), err
}

// Links lists the guest's interface names (lo included).
func (g *Guest) Links(ctx context.Context) ([]string, error) {
	out, err := g.Run(ctx, "ls /sys/class/net")
	if err != nil {
		return nil, err
	}
	return strings.Fields(out), nil
}

// WaitForMAC waits until an interface with that MAC appears and returns its
// name (use it when the guest has several NICs).
func (g *Guest) WaitForMAC(ctx context.Context, mac string) (string, error) {
	mac = strings.ToLower(mac)
	var name string
	err := g.poll(ctx, "wait for guest link with MAC "+mac, func() (bool, error) {
		out, err := g.Run(ctx, "for i in /sys/class/net/*; do [ \"$(cat $i/address)\" = "+shellQuote(mac)+" ] && basename $i; done; true")
		name = strings.TrimSpace(out)
		return name != "", err
	})
	return name, err
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Close stops QEMU (QMP quit, then SIGKILL if it lingers) and removes the
// sockets, and the work dir when Boot created it. It is safe to call twice.
func (g *Guest) Close() error {
	g.closeOnce.Do(func() {
		if g.cmd != nil {
			if !g.Exited() {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				qmpCommand(ctx, g.ctlSocket, "quit", nil)
				cancel()
			}
			select {
			case <-g.exited:
			case <-time.After(10 * time.Second):
				g.cmd.Process.Kill()
				<-g.exited
			}
		}
		if g.stdin != nil {
			g.stdin.Close()
		}
		if g.con != nil {
			g.con.closeLog()
		}
		for _, s := range []string{g.qmpSocket, g.ctlSocket} {
			if s != "" {
				os.Remove(s)
			}
		}
		if g.ownsWork {
			g.closeErr = os.RemoveAll(g.workDir)
		} else {
			os.Remove(filepath.Join(g.workDir, "qemu.stderr"))
			os.Remove(g.logPath)
		}
	})
	return g.closeErr
}
