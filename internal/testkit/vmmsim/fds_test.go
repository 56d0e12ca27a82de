package vmmsim

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
)

// rawWithFds sends one request with files as SCM_RIGHTS on its bytes.
func rawWithFds(t *testing.T, socket, method, path, body string, files []*os.File) (int, string) {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req, _ := http.NewRequest(method, "http://localhost"+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	var b bytes.Buffer
	req.Write(&b)
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	if _, _, err := c.WriteMsgUnix(b.Bytes(), syscall.UnixRights(fds...), nil); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

func devNulls(t *testing.T, n int) []*os.File {
	t.Helper()
	var files []*os.File
	for range n {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		files = append(files, f)
	}
	return files
}

// countFds counts this process's fds open on /dev/null (the files the
// tests send; other fds, such as the server side of a connection the
// client just closed, come and go on their own).
func countFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == os.DevNull {
			n++
		}
	}
	return n
}

// TestCHFdsOnAddNet: the simulator receives SCM_RIGHTS fds with vm.add-net
// and, like Cloud Hypervisor, refuses a count that does not match
// num_queues (fds.len()*2 != num_queues: VnetQueueFdMismatch, a
// ConfigValidation error: 400 on main, 500 up to v53) and fds that are not
// TAP queues (TUNGETIFF fails); the fds of refused requests are closed.
// vm.create takes no fds. The requests stay spec-valid (fds ride beside
// the body, never in it).
func TestCHFdsOnAddNet(t *testing.T) {
	for _, tc := range []struct {
		name      string
		version   int
		fds       int
		body      string
		status    int
		msg       string
		wantCalls int
	}{
		{"too few fds v53", 53, 1, `{"id":"n1","num_queues":4}`, 500, "does not match the number of input FDs", 1},
		{"too many fds main", CHMain, 3, `{"id":"n1","num_queues":2}`, 400, "does not match the number of input FDs", 1},
		{"not a TAP", 53, 1, `{"id":"n1","num_queues":2}`, 500, "Unable to get the TAP interface name", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewCH(t, CHConfig{Version: tc.version})
			files := devNulls(t, tc.fds)
			before := countFds(t)
			status, body := rawWithFds(t, s.Socket(), http.MethodPut, "/api/v1/vm.add-net", tc.body, files)
			if status != tc.status || !strings.Contains(body, tc.msg) {
				t.Fatalf("vm.add-net with %d fds = %d %s; want %d with %q", tc.fds, status, body, tc.status, tc.msg)
			}
			calls := s.Calls()
			if len(calls) != tc.wantCalls || calls[0].Fds != tc.fds {
				t.Errorf("calls %+v: want one with %d fds", calls, tc.fds)
			}
			if len(s.Net()) != 0 {
				t.Errorf("refused NIC in the config: %+v", s.Net())
			}
			if v := s.Violations(); len(v) > 0 {
				t.Errorf("spec violations: %v", v)
			}
			if got := countFds(t); got != before {
				t.Errorf("%d fds open after the refused request, %d before: the simulator kept the fds", got, before)
			}
		})
	}
	t.Run("vm.create drops fds", func(t *testing.T) {
		s := NewCH(t, CHConfig{State: CHNotCreated})
		files := devNulls(t, 2)
		before := countFds(t)
		status, body := rawWithFds(t, s.Socket(), http.MethodPut, "/api/v1/vm.create", `{"payload":{"kernel":"/k"}}`, files)
		if status != http.StatusNoContent {
			t.Fatalf("vm.create = %d %s", status, body)
		}
		if got := countFds(t); got != before {
			t.Errorf("%d fds open after vm.create, %d before", got, before)
		}
	})
}
