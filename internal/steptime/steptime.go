// Package steptime times the steps of one plugin call and appends them, as
// one JSON line, to the file named by the environment variable
// VMNIC_STEP_TIMES. The benchmark (bench/) sets that variable and reads the
// lines back; in production the variable is unset, FromEnv returns nil and
// every method of a nil *Recorder does nothing, so the calls cost a nil check.
//
// There is no global state: each call makes its own Recorder.
//
//	st := steptime.FromEnv("ADD")
//	defer func() { st.Finish(err) }()
//	... parse the conf ...
//	st.Step("parse")
//	... lock and load the record ...
//	st.Step("lock")
package steptime

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// EnvVar names the file that step times are appended to.
const EnvVar = "VMNIC_STEP_TIMES"

// Step is one timed step of a call.
type Step struct {
	Name string `json:"name"`
	NS   int64  `json:"ns"`
}

// Record is one call: its steps in order, and wall-clock start and end so
// that a caller who knows when it exec'd the process can tell process start
// and exit apart from the call's own work.
type Record struct {
	Cmd       string `json:"cmd"`
	Sandbox   string `json:"sandbox,omitempty"`
	IfName    string `json:"ifname,omitempty"`
	PID       int    `json:"pid"`
	StartUnix int64  `json:"start_unix_ns"`
	EndUnix   int64  `json:"end_unix_ns"`
	TotalNS   int64  `json:"total_ns"`
	Steps     []Step `json:"steps"`
	Error     string `json:"error,omitempty"`
}

// Recorder times the steps of one call. A nil *Recorder is valid and does
// nothing.
type Recorder struct {
	path  string
	start time.Time
	last  time.Time
	rec   Record
}

// FromEnv returns a Recorder for the command cmd (ADD, DEL, ...) writing to
// the file named by VMNIC_STEP_TIMES, or nil when the variable is unset.
func FromEnv(cmd string) *Recorder {
	path := os.Getenv(EnvVar)
	if path == "" {
		return nil
	}
	return New(path, cmd)
}

// New returns a Recorder appending to path. The clock starts now.
func New(path, cmd string) *Recorder {
	now := time.Now()
	return &Recorder{path: path, start: now, last: now, rec: Record{Cmd: cmd, PID: os.Getpid(), StartUnix: now.UnixNano()}}
}

// Step ends the step named name: it lasted from the previous Step (or from
// New) until now. Steps with the same name are recorded separately, in order.
func (r *Recorder) Step(name string) {
	if r == nil {
		return
	}
	now := time.Now()
	r.rec.Steps = append(r.rec.Steps, Step{Name: name, NS: int64(now.Sub(r.last))})
	r.last = now
}

// Label names the sandbox and interface the call was about.
func (r *Recorder) Label(sandbox, ifname string) {
	if r == nil {
		return
	}
	r.rec.Sandbox, r.rec.IfName = sandbox, ifname
}

// Finish closes the call (time since the last Step is recorded as "other")
// and appends its record to the file as one line. err, when not nil, is
// recorded too. A Recorder is finished once; later calls do nothing.
func (r *Recorder) Finish(err error) error {
	if r == nil || r.path == "" {
		return nil
	}
	now := time.Now()
	if d := now.Sub(r.last); d > 0 {
		r.rec.Steps = append(r.rec.Steps, Step{Name: "other", NS: int64(d)})
	}
	r.rec.EndUnix = now.UnixNano()
	r.rec.TotalNS = int64(now.Sub(r.start))
	if err != nil {
		r.rec.Error = err.Error()
	}
	path := r.path
	r.path = ""
	line, jerr := json.Marshal(r.rec)
	if jerr != nil {
		return fmt.Errorf("step times: %w", jerr)
	}
	f, ferr := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if ferr != nil {
		return fmt.Errorf("step times: %w", ferr)
	}
	// One write of one line: O_APPEND keeps lines of concurrent calls whole.
	_, werr := f.Write(append(line, '\n'))
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("step times %s: %w", path, werr)
	}
	if cerr != nil {
		return fmt.Errorf("step times %s: %w", path, cerr)
	}
	return nil
}

// ReadFile reads the records appended to path, in order.
func ReadFile(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("step times: %w", err)
	}
	defer f.Close()
	var recs []Record
	dec := json.NewDecoder(f)
	for dec.More() {
		var r Record
		if err := dec.Decode(&r); err != nil {
			return recs, fmt.Errorf("step times %s: record %d: %w", path, len(recs)+1, err)
		}
		recs = append(recs, r)
	}
	return recs, nil
}
