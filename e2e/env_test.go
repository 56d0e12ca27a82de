package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"
	"k8s.io/klog/v2"
)

// Names and ranges owned by this suite: nothing else on the host uses them.
const (
	pauseImage = "localhost/vmnic-e2e/pause:1"
	vmmImage   = "localhost/vmnic-e2e/vmm:1"
	net0Name   = "vmne2e"
	net0Bridge = "vmne2e0"
	net0Subnet = "10.204.0.0/16"
	net1Name   = "vmne2e-net2"
	net1Bridge = "vmne2e1"
	net1Subnet = "10.214.0.0/16"
	vmHandler  = "vmnic" // runtime handler whose CNI chain ends with vmnic
	// fdHandler's chain ends with vmnic at tapHandoff "fd": its VMMs must
	// take their TAPs as fds.
	fdHandler     = "vmnic-fd"
	vmmAnnotation = "vmnic.io/vmm" // the pod's VMM kind (nri-hook config.AnnotationVMM)
	vmAnnotation  = "vmnic.io/vm"
	podNamespace  = "vmne2e"
	tmpPrefix     = "vmne2e."     // temp dirs: <TMPDIR>/vmne2e.<random>
	lockName      = "vmne2e.lock" // one e2e run at a time on a host
	criNamespace  = "k8s.io"
	cgroupParent  = "vmne2e" // pods' cgroups: /sys/fs/cgroup/<controller>/vmne2e/<id>
)

// suite is the containerd every test of this package shares. Each test
// removes the pods it made (t.Cleanup); TestMain removes everything else.
var (
	suite     *Env
	suiteSkip string // why there is no suite (not root, tools missing)
)

func required() bool { return os.Getenv("VMNIC_REQUIRE_ROOT_TESTS") == "1" }

// needSuite returns the shared runtime, or skips (fails when root tests are
// required) when there is none.
func needSuite(t testing.TB) *Env {
	t.Helper()
	if suite == nil {
		if required() {
			t.Fatalf("e2e suite unavailable (VMNIC_REQUIRE_ROOT_TESTS=1): %s", suiteSkip)
		}
		t.Skipf("skipped: %s", suiteSkip)
	}
	return suite
}

// e2eRuncVersion is the runc the Makefile builds (mk/e2e.mk).
const e2eRuncVersion = "v1.3.1"

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	// The CRI client logs every failed call through klog; the suite reports
	// the errors it cares about itself (and polls while containerd starts).
	klog.SetOutput(io.Discard)
	klog.LogToStderr(false)
	if os.Geteuid() != 0 {
		suiteSkip = "the e2e suite needs root (containerd, netns, links); run `make e2e` as root"
		return m.Run()
	}
	unlock, err := lockSuite()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer unlock()

	p, missing := findPaths()
	for _, err := range cleanupLeftovers(p) {
		fmt.Fprintln(os.Stderr, "e2e: cleaning up an earlier run:", err)
	}
	if len(missing) > 0 {
		suiteSkip = "missing " + strings.Join(missing, ", ") + " (run `make e2e`)"
		return m.Run()
	}
	start := time.Now()
	e, err := newEnv(p)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: start containerd:", err)
		if e != nil {
			e.dumpLog(os.Stderr, 60)
			for _, err := range e.Close() {
				fmt.Fprintln(os.Stderr, "e2e: cleanup:", err)
			}
		}
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: %s up in %s (dir %s, vmnic CNI %v, vmnic NRI %v)\n",
		containerdVersion(e), time.Since(start).Round(time.Millisecond), e.Dir, e.HasVmnicCNI, e.HasVmnicNRI)
	suite = e
	code := m.Run()
	if code != 0 {
		e.dumpLog(os.Stderr, 80)
	}
	for _, err := range e.Close() {
		fmt.Fprintln(os.Stderr, "e2e: cleanup:", err)
		code = 1
	}
	return code
}

func containerdVersion(e *Env) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := e.RS.Version(ctx, "v1")
	if err != nil {
		return "?"
	}
	return v.RuntimeName + " " + v.RuntimeVersion
}

// lockSuite serialises e2e runs on a host: they share bridge names and ranges.
func lockSuite() (func(), error) {
	p := filepath.Join(os.TempDir(), lockName)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	return func() { f.Close() }, nil
}

// paths are the binaries and images the suite runs.
type paths struct {
	repo   string
	e2eBin string // containerd, containerd-shim-runc-v2, ctr, runc
	images string // pause.tar, vmm.tar
	cniBin string // reference CNI plugins
	bin    string // vmnic, vmnic-nri, vmnicctl
}

func (p paths) tool(name string) string  { return filepath.Join(p.e2eBin, name) }
func (p paths) vmnic(name string) string { return filepath.Join(p.bin, name) }

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// findPaths locates what the suite needs (make exports VMNIC_*; the defaults
// are relative to the repository root, the parent of this module) and lists
// what is missing.
func findPaths() (paths, []string) {
	repo, _ := filepath.Abs("..")
	env := func(k, def string) string {
		if v := os.Getenv(k); v != "" {
			return v
		}
		return filepath.Join(repo, def)
	}
	e2eTools := env("VMNIC_E2E_TOOLS", ".tools/e2e")
	p := paths{
		repo:   repo,
		e2eBin: filepath.Join(e2eTools, "bin"),
		images: filepath.Join(e2eTools, "images"),
		cniBin: env("VMNIC_CNI_BIN", ".tools/cni"),
		bin:    env("VMNIC_BIN", "bin"),
	}
	var missing []string
	for _, f := range []string{
		p.tool("containerd"), p.tool("containerd-shim-runc-v2"), p.tool("ctr"), p.tool("runc"),
		filepath.Join(p.images, "pause.tar"), filepath.Join(p.images, "vmm.tar"),
		filepath.Join(p.cniBin, "bridge"), filepath.Join(p.cniBin, "host-local"), filepath.Join(p.cniBin, "loopback"),
	} {
		if !exists(f) {
			missing = append(missing, f)
		}
	}
	return p, missing
}

// Env is one containerd with its own root, state, sockets, CNI and NRI
// configuration, all under Dir.
type Env struct {
	p   paths
	Dir string

	Sock       string // containerd's gRPC socket (CRI)
	NRISock    string // NRI socket for external plugins
	CNIBin     string // the CNI bin dir containerd uses: reference plugins + vmnic
	PlainConf  string // CNI conf dir of the default handler: bridge + host-local
	VMConf     string // CNI conf dir of the vm handler: bridge + host-local + vmnic
	FdConf     string // CNI conf dir of the fd handler: the same with vmnic's tapHandoff "fd"
	Net2FdConf string // conflist file of the second network with tapHandoff "fd"
	Net2Conf   string // conflist file of the second network (hot-added by the tests)
	IPAMDir    string // host-local dataDir
	VmnicState string // vmnic state dir (NetSetup records)
	VmnicRun   string // vmnic per-sandbox runtime dirs (VMM API sockets)
	LogDir     string // pod log directories
	CNICache   string // libcni cache of the tests' own CNI calls

	HasVmnicCNI bool // bin/vmnic is in the vm handler's chain
	HasVmnicNRI bool // bin/vmnic-nri is installed as a pre-installed NRI plugin

	RS internalapi.RuntimeService

	cmd    *exec.Cmd
	exited chan struct{}
	log    *os.File
}

func newEnv(p paths) (*Env, error) {
	dir, err := os.MkdirTemp("", tmpPrefix)
	if err != nil {
		return nil, err
	}
	e := &Env{
		p:          p,
		Dir:        dir,
		Sock:       filepath.Join(dir, "containerd.sock"),
		NRISock:    filepath.Join(dir, "nri", "nri.sock"),
		CNIBin:     filepath.Join(dir, "cni", "bin"),
		PlainConf:  filepath.Join(dir, "cni", "plain"),
		VMConf:     filepath.Join(dir, "cni", "vm"),
		FdConf:     filepath.Join(dir, "cni", "fd"),
		Net2FdConf: filepath.Join(dir, "cni", "net2-fd.conflist"),
		Net2Conf:   filepath.Join(dir, "cni", "net2.conflist"),
		IPAMDir:    filepath.Join(dir, "ipam"),
		VmnicState: filepath.Join(dir, "vmnic"),
		VmnicRun:   filepath.Join(dir, "run"),
		LogDir:     filepath.Join(dir, "logs"),
		CNICache:   filepath.Join(dir, "cni", "cache"),
	}
	if err := e.setup(); err != nil {
		return e, err
	}
	if err := e.start(); err != nil {
		return e, err
	}
	if err := e.importImages(); err != nil {
		return e, err
	}
	return e, nil
}

// setup writes the CNI, NRI and containerd configuration.
func (e *Env) setup() error {
	for _, d := range []string{e.CNIBin, e.PlainConf, e.VMConf, e.FdConf, e.IPAMDir, e.LogDir, e.CNICache,
		filepath.Join(e.Dir, "nri", "plugins"), filepath.Join(e.Dir, "nri", "conf.d")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	// The CNI bin dir: the reference plugins plus the freshly built vmnic.
	ents, err := os.ReadDir(e.p.cniBin)
	if err != nil {
		return fmt.Errorf("CNI bin dir: %w", err)
	}
	for _, ent := range ents {
		if ent.Type().IsRegular() && ent.Name() != "vmnic" && !strings.HasPrefix(ent.Name(), ".") {
			if err := os.Symlink(filepath.Join(e.p.cniBin, ent.Name()), filepath.Join(e.CNIBin, ent.Name())); err != nil {
				return err
			}
		}
	}
	if exists(e.p.vmnic("vmnic")) {
		if err := os.Symlink(e.p.vmnic("vmnic"), filepath.Join(e.CNIBin, "vmnic")); err != nil {
			return err
		}
		e.HasVmnicCNI = true
	}
	if exists(e.p.vmnic("vmnic-nri")) {
		if err := e.installNRIPlugin(); err != nil {
			return err
		}
		e.HasVmnicNRI = true
	}
	if err := e.writeCNIConfigs(); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(e.Dir, "config.toml"), []byte(e.containerdConfig()), 0o600)
}

// containerdConfig is containerd's configuration: everything under Dir.
func (e *Env) containerdConfig() string {
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	runtime := func(name, cniConfDir string) string {
		s := fmt.Sprintf(`
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.%s]
  runtime_type = "io.containerd.runc.v2"
`, name)
		if cniConfDir != "" {
			s += fmt.Sprintf("  cni_conf_dir = %s\n  cni_max_conf_num = 1\n", q(cniConfDir))
		}
		s += fmt.Sprintf(`[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.%s.options]
  BinaryName = %s
  Root = %s
  SystemdCgroup = false
`, name, q(e.p.tool("runc")), q(filepath.Join(e.Dir, "runc")))
		return s
	}
	return fmt.Sprintf(`version = 3
root = %s
state = %s

[grpc]
  address = %s
[ttrpc]
  address = %s
[debug]
  address = %s
[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %s

[plugins."io.containerd.cri.v1.runtime"]
  # This sandbox refuses a negative oom_score_adj (the pause container's default).
  restrict_oom_score_adj = true
  # Pod netns bind mounts go under our state dir, not /var/run/netns.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
%s%s
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [%s]
    conf_dir = %s
    max_conf_num = 1

[plugins."io.containerd.nri.v1.nri"]
  disable = false
  disable_connections = false
  socket_path = %s
  plugin_path = %s
  plugin_config_path = %s
  plugin_registration_timeout = "5s"
  plugin_request_timeout = "2s"
`,
		q(filepath.Join(e.Dir, "root")), q(filepath.Join(e.Dir, "state")),
		q(e.Sock), q(e.Sock+".ttrpc"), q(filepath.Join(e.Dir, "debug.sock")),
		q(pauseImage),
		runtime("runc", ""), runtime(vmHandler, e.VMConf)+runtime(fdHandler, e.FdConf),
		q(e.CNIBin), q(e.PlainConf),
		q(e.NRISock), q(filepath.Join(e.Dir, "nri", "plugins")), q(filepath.Join(e.Dir, "nri", "conf.d")),
	)
}

// start starts containerd and waits until the CRI reports runtime and network ready.
func (e *Env) start() error {
	if e.log == nil {
		f, err := os.OpenFile(filepath.Join(e.Dir, "containerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		e.log = f
	}
	cmd := exec.Command(e.p.tool("containerd"), "--config", filepath.Join(e.Dir, "config.toml"), "--log-level", "info")
	// containerd finds its shim on PATH; the shim finds runc through BinaryName.
	cmd.Env = []string{"PATH=" + e.p.e2eBin + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TMPDIR=" + e.Dir}
	cmd.Stdout, cmd.Stderr = e.log, e.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start containerd: %w", err)
	}
	e.cmd = cmd
	e.exited = make(chan struct{})
	go func(c chan struct{}) { cmd.Wait(); close(c) }(e.exited)
	return e.waitReady(60 * time.Second)
}

func (e *Env) waitReady(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last error
	for {
		select {
		case <-e.exited:
			return fmt.Errorf("containerd exited: %v", e.cmd.ProcessState)
		default:
		}
		if last = e.checkReady(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("containerd not ready after %s: %w", timeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (e *Env) checkReady(ctx context.Context) error {
	if !exists(e.Sock) {
		return errors.New("no socket yet")
	}
	if e.RS == nil {
		rs, err := remote.NewRemoteRuntimeServiceBuilder().
			WithEndpoint("unix://" + e.Sock).
			WithConnectionTimeout(60 * time.Second). // also each call's timeout (RunPodSandbox: twice)
			Build(ctx)
		if err != nil {
			return err
		}
		e.RS = rs
	}
	st, err := e.RS.Status(ctx, false)
	if err != nil {
		return err
	}
	for _, c := range st.GetStatus().GetConditions() {
		if (c.Type == runtimeapi.RuntimeReady || c.Type == runtimeapi.NetworkReady) && !c.Status {
			return fmt.Errorf("%s: %s %s", c.Type, c.Reason, c.Message)
		}
	}
	return nil
}

// stop stops containerd (SIGTERM, then SIGKILL). Pods keep running: their
// shims outlive containerd, as on a real node.
func (e *Env) stop() error {
	if e.cmd == nil {
		return nil
	}
	defer func() { e.cmd = nil }()
	select {
	case <-e.exited:
		return nil
	default:
	}
	e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.exited:
		return nil
	case <-time.After(15 * time.Second):
	}
	e.cmd.Process.Kill()
	<-e.exited
	return errors.New("containerd ignored SIGTERM for 15s; killed")
}

// Restart stops containerd and starts it again on the same root and state.
func (e *Env) Restart() error {
	if err := e.stop(); err != nil {
		return err
	}
	return e.start()
}

// ctr runs ctr against this containerd.
func (e *Env) ctr(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.p.tool("ctr"), append([]string{"--address", e.Sock, "-n", criNamespace}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

func (e *Env) importImages() error {
	for _, img := range []string{"pause.tar", "vmm.tar"} {
		if _, err := e.ctr("images", "import", "--snapshotter", "overlayfs", "--platform", "linux/amd64",
			filepath.Join(e.p.images, img)); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	is, err := remote.NewRemoteImageServiceBuilder().WithEndpoint("unix://" + e.Sock).WithConnectionTimeout(30 * time.Second).Build(ctx)
	if err != nil {
		return err
	}
	defer is.Close(ctx)
	// The CRI's image store learns of imported images from events: wait.
	for _, ref := range []string{pauseImage, vmmImage} {
		for {
			st, err := is.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: ref}, false)
			if err != nil {
				return fmt.Errorf("image status %s: %w", ref, err)
			}
			if st.GetImage() != nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("image %s imported but not seen by the CRI", ref)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// Close removes every pod, stops containerd and removes everything the suite
// made on the host.
func (e *Env) Close() []error {
	var errs []error
	if e.RS != nil && e.cmd != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		pods, err := e.RS.ListPodSandbox(ctx, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("list pods: %w", err))
		}
		for _, p := range pods {
			if err := e.removePod(ctx, p.Id); err != nil {
				errs = append(errs, err)
			}
		}
		cancel()
		e.RS.Close(context.Background())
	}
	if err := e.stop(); err != nil {
		errs = append(errs, err)
	}
	if e.log != nil {
		e.log.Close()
	}
	if os.Getenv("VMNIC_E2E_KEEP") == "1" {
		fmt.Fprintf(os.Stderr, "e2e: VMNIC_E2E_KEEP=1: leaving %s\n", e.Dir)
		return errs
	}
	return append(errs, forceCleanup(e.Dir, e.p)...)
}

// removePod stops and removes a pod; a pod that is already gone is fine.
func (e *Env) removePod(ctx context.Context, id string) error {
	if err := e.RS.StopPodSandbox(ctx, id); err != nil && !isNotFound(err) {
		return fmt.Errorf("stop pod %s: %w", id, err)
	}
	if err := e.RS.RemovePodSandbox(ctx, id); err != nil && !isNotFound(err) {
		return fmt.Errorf("remove pod %s: %w", id, err)
	}
	return nil
}

func isNotFound(err error) bool {
	return err != nil && strings.Contains(strings.ToLower(err.Error()), "not found")
}

// dumpLog writes the last n lines of containerd's log.
func (e *Env) dumpLog(w *os.File, n int) {
	data, err := os.ReadFile(filepath.Join(e.Dir, "containerd.log"))
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	fmt.Fprintf(w, "--- last %d lines of containerd.log ---\n%s\n---\n", len(lines), strings.Join(lines, "\n"))
}
