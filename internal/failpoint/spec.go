package failpoint

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Kind is what an armed point does when hit.
type Kind string

const (
	Crash Kind = "crash" // SIGKILL the process
	Error Kind = "error" // Inject returns an error
	Sleep Kind = "sleep" // pause, then go on
)

// Action is an armed point's behaviour.
type Action struct {
	Kind  Kind
	Delay time.Duration // Sleep
	// Hit, when > 0, fires only on the Hit-th time the point is reached.
	Hit int
}

func (a Action) String() string {
	s := string(a.Kind)
	if a.Kind == Sleep {
		s += ":" + a.Delay.String()
	}
	if a.Hit > 0 {
		s += "@" + strconv.Itoa(a.Hit)
	}
	return s
}

// Spec formats one armed point for the environment (name=action).
func Spec(name string, a Action) string { return name + "=" + a.String() }

// Parse reads a VMNIC_FAILPOINTS value. Names must be registered: an
// unknown name is an error, so a typo never silently tests nothing.
func Parse(s string) (map[string]Action, error) {
	out := map[string]Action{}
	for _, item := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ';' || r == ' ' }) {
		name, act, ok := strings.Cut(item, "=")
		if !ok || name == "" || act == "" {
			return nil, fmt.Errorf("%s: %q: want name=action", Env, item)
		}
		if _, known := Lookup(name); !known {
			return nil, fmt.Errorf("%s: unknown failpoint %q (known: %s)", Env, name, strings.Join(Names(), ", "))
		}
		a, err := parseAction(act)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", Env, name, err)
		}
		out[name] = a
	}
	return out, nil
}

func parseAction(s string) (Action, error) {
	var a Action
	if body, n, ok := strings.Cut(s, "@"); ok {
		hit, err := strconv.Atoi(n)
		if err != nil || hit < 1 {
			return a, fmt.Errorf("action %q: @N needs a positive number", s)
		}
		a.Hit = hit
		s = body
	}
	kind, arg, _ := strings.Cut(s, ":")
	switch Kind(kind) {
	case Crash, Error:
		if arg != "" {
			return a, fmt.Errorf("action %q takes no argument", s)
		}
		a.Kind = Kind(kind)
	case Sleep:
		d, err := time.ParseDuration(arg)
		if err != nil || d < 0 {
			return a, fmt.Errorf("action %q: want sleep:<duration>", s)
		}
		a.Kind, a.Delay = Sleep, d
	default:
		return a, fmt.Errorf("unknown action %q (crash, error, sleep:<duration>)", s)
	}
	return a, nil
}

// InjectedError is what Inject returns for an armed error action.
type InjectedError struct{ Name string }

func (e *InjectedError) Error() string { return "failpoint " + e.Name + ": injected error" }
