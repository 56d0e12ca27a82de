package apiclient

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/vmnic/vmnic/vmmadapter"
)

// APIError is a VMM's refusal (non-2xx answer), decoded.
type APIError struct {
	Kind    vmmadapter.Kind
	Socket  string
	Call    string
	Status  int
	Chain   []string // the VMM's message(s): CH's error chain, FC's fault_message
	RawBody string   // when the body could not be decoded
}

// Message is the VMM's message in one line.
func (e *APIError) Message() string {
	if len(e.Chain) > 0 {
		return strings.Join(e.Chain, ": ")
	}
	if e.RawBody != "" {
		return e.RawBody
	}
	return http.StatusText(e.Status)
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s API %s on %s answered %d: %s", e.Kind, e.Call, e.Socket, e.Status, e.Message())
}

// Contains reports whether the VMM's message contains any of subs (case-insensitive).
func (e *APIError) Contains(subs ...string) bool {
	m := strings.ToLower(e.Message())
	for _, s := range subs {
		if strings.Contains(m, strings.ToLower(s)) {
			return true
		}
	}
	return false
}

// NewAPIError decodes the body of a failed call. Both VMMs' shapes are tried:
// Cloud Hypervisor v47+ sends a JSON array of strings (top-level error first,
// root cause last), older CH plain text; Firecracker sends
// {"fault_message": "..."}.
func (c *Client) NewAPIError(call string, r *Response) *APIError {
	e := &APIError{Kind: c.Kind, Socket: c.Socket, Call: call, Status: r.Status}
	e.Chain, e.RawBody = DecodeErrorBody(r.Body)
	return e
}

// DecodeErrorBody returns the message chain of an error body, or, when it is
// neither a JSON string list nor a fault_message object, the body as
// printable text (trimmed, shortened).
func DecodeErrorBody(body []byte) (chain []string, raw string) {
	trimmed := strings.TrimSpace(string(body))
	if trimmed == "" {
		return nil, ""
	}
	var list []string
	if json.Unmarshal(body, &list) == nil {
		out := list[:0]
		for _, s := range list {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		return out, ""
	}
	var fault struct {
		FaultMessage *string `json:"fault_message"`
	}
	if json.Unmarshal(body, &fault) == nil && fault.FaultMessage != nil {
		return []string{strings.TrimSpace(*fault.FaultMessage)}, ""
	}
	return nil, printable(trimmed, 300)
}

// printable keeps a message readable whatever the VMM sent.
func printable(s string, max int) string {
	var b strings.Builder
	for i, r := range s {
		if i >= max {
			b.WriteString("…")
			break
		}
		switch {
		case r == utf8.RuneError:
			b.WriteRune('?')
		case r == '\n' || r == '\r' || r == '\t':
			b.WriteRune(' ')
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\x%02x", r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
