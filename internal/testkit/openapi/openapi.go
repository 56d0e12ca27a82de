// Package openapi is a small validator for the two VMM API specs vmnic
// tests against: Cloud Hypervisor's OpenAPI 3 file and Firecracker's Swagger
// 2 file. It checks that a request's method and path exist and that its JSON
// body matches the operation's schema (types, required fields, unknown
// fields, enums, ranges, integer formats, patterns), and that 2xx response
// bodies match their schemas. It is test support, not a general OpenAPI
// implementation: unsupported keywords are ignored.
//
// Objects are closed by default ("strict"): a property the schema does not
// list is a violation unless the schema says additionalProperties. Firecracker
// rejects unknown fields at run time and vmnic should never send Cloud
// Hypervisor a field its spec does not name, so strict is what the tests want.
package openapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Violation is one way a request or response departs from the spec.
type Violation struct {
	Method string
	Path   string // the request path as sent
	Where  string // JSON pointer into the body, or "path", "method", "body"
	Msg    string
}

func (v Violation) String() string {
	return fmt.Sprintf("%s %s: %s: %s", v.Method, v.Path, v.Where, v.Msg)
}

// Spec is a loaded API description.
type Spec struct {
	prefix     string // path prefix from servers[0].url (OpenAPI 3) or basePath (Swagger 2)
	root       map[string]any
	paths      []*pathItem
	paramRules map[string]*regexp.Regexp
}

type pathItem struct {
	template string
	segs     []string
	ops      map[string]*operation // upper-case method
}

type operation struct {
	body         map[string]any // schema; nil when the operation takes no body
	bodyRequired bool
	params       map[string]map[string]any // path parameter name → schema-ish (Swagger 2 params carry type/pattern inline)
	responses    map[string]map[string]any // status code → schema (nil = no body)
}

// Load reads a spec file.
func Load(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// Parse reads an OpenAPI 3 or Swagger 2 document.
func Parse(data []byte) (*Spec, error) {
	var raw any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("parse spec: %w", err)
	}
	root, ok := normalize(raw).(map[string]any)
	if !ok {
		return nil, fmt.Errorf("parse spec: top level is not a mapping")
	}
	s := &Spec{root: root, paramRules: map[string]*regexp.Regexp{}}
	switch {
	case root["openapi"] != nil:
		if servers, ok := root["servers"].([]any); ok && len(servers) > 0 {
			if srv, ok := servers[0].(map[string]any); ok {
				s.prefix = urlPath(str(srv["url"]))
			}
		}
	case root["swagger"] != nil:
		s.prefix = strings.TrimSuffix(str(root["basePath"]), "/")
	default:
		return nil, fmt.Errorf("parse spec: neither openapi nor swagger document")
	}
	paths, _ := root["paths"].(map[string]any)
	if len(paths) == 0 {
		return nil, fmt.Errorf("parse spec: no paths")
	}
	for tmpl, v := range paths {
		item, _ := v.(map[string]any)
		pi := &pathItem{template: tmpl, segs: splitPath(tmpl), ops: map[string]*operation{}}
		for method, ov := range item {
			m := strings.ToUpper(method)
			switch m {
			case "GET", "PUT", "POST", "PATCH", "DELETE", "HEAD", "OPTIONS":
			default:
				continue
			}
			o, _ := ov.(map[string]any)
			pi.ops[m] = s.compileOp(o)
		}
		s.paths = append(s.paths, pi)
	}
	// Literal paths before templated ones, so "/vm/config" beats "/vm/{x}".
	sort.Slice(s.paths, func(i, j int) bool {
		ti, tj := strings.Count(s.paths[i].template, "{"), strings.Count(s.paths[j].template, "{")
		if ti != tj {
			return ti < tj
		}
		return s.paths[i].template < s.paths[j].template
	})
	return s, nil
}

// SetParamRule adds a constraint the spec does not state but the server
// enforces: every path parameter called name must match pattern (e.g.
// Firecracker's iface_id "^[A-Za-z0-9_]+$"). It applies to every operation of
// a matching path template, also to operations the spec lacks.
func (s *Spec) SetParamRule(name, pattern string) error {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return err
	}
	s.paramRules[name] = re
	return nil
}

// AddProperty adds property name, with schema def, to the named object
// schema (components/schemas or definitions): a field the server reads that
// the spec does not list (a known spec-vs-server gap, e.g. Cloud
// Hypervisor's RestoreConfig.net_fds). The schema must exist and must not
// list the property already (a spec that gained it needs no patch).
func (s *Spec) AddProperty(schema, name string, def map[string]any) error {
	sch := s.named(schema)
	if sch == nil {
		return fmt.Errorf("add property %s.%s: no schema named %s", schema, name, schema)
	}
	props := asMap(sch["properties"])
	if props == nil {
		props = map[string]any{}
		sch["properties"] = props
	}
	if _, ok := props[name]; ok {
		return fmt.Errorf("add property %s.%s: the spec has it already", schema, name)
	}
	props[name] = def
	return nil
}

// Prefix is the path prefix every request path carries ("/api/v1" for Cloud
// Hypervisor, "" for Firecracker).
func (s *Spec) Prefix() string { return s.prefix }

func (s *Spec) compileOp(o map[string]any) *operation {
	op := &operation{params: map[string]map[string]any{}, responses: map[string]map[string]any{}}
	for _, pv := range asList(o["parameters"]) {
		p := s.deref(asMap(pv))
		switch str(p["in"]) {
		case "body": // Swagger 2
			op.body = asMap(p["schema"])
			op.bodyRequired = p["required"] == true
			if op.body == nil {
				op.body = map[string]any{}
			}
		case "path":
			sch := asMap(p["schema"]) // OpenAPI 3
			if sch == nil {
				sch = p // Swagger 2: type/pattern inline
			}
			op.params[str(p["name"])] = sch
		}
	}
	if rb := s.deref(asMap(o["requestBody"])); rb != nil { // OpenAPI 3
		op.bodyRequired = rb["required"] == true
		op.body = map[string]any{}
		if content := asMap(rb["content"]); content != nil {
			if js := asMap(content["application/json"]); js != nil && js["schema"] != nil {
				op.body = asMap(js["schema"])
			}
		}
	}
	for code, rv := range asMap(o["responses"]) {
		r := s.deref(asMap(rv))
		var sch map[string]any
		if r != nil {
			if r["schema"] != nil { // Swagger 2
				sch = asMap(r["schema"])
			} else if content := asMap(r["content"]); content != nil {
				if js := asMap(content["application/json"]); js != nil {
					sch = asMap(js["schema"])
				}
			}
		}
		op.responses[code] = sch
	}
	return op
}

// find returns the path item matching urlPath (prefix stripped) and the path
// parameters, or nil.
func (s *Spec) find(urlPath string) (*pathItem, map[string]string) {
	p := urlPath
	if s.prefix != "" {
		if !strings.HasPrefix(p, s.prefix+"/") {
			return nil, nil
		}
		p = strings.TrimPrefix(p, s.prefix)
	}
	segs := splitPath(p)
	for _, pi := range s.paths {
		if len(pi.segs) != len(segs) {
			continue
		}
		params := map[string]string{}
		ok := true
		for i, seg := range pi.segs {
			if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") {
				params[seg[1:len(seg)-1]] = segs[i]
				continue
			}
			if seg != segs[i] {
				ok = false
				break
			}
		}
		if ok {
			return pi, params
		}
	}
	return nil, nil
}

// Template returns the spec's path template for a request path ("" when none
// matches), e.g. "/network-interfaces/{iface_id}".
func (s *Spec) Template(urlPath string) string {
	pi, _ := s.find(urlPath)
	if pi == nil {
		return ""
	}
	return pi.template
}

// ValidateRequest checks one request. body may be nil or empty for "no body".
func (s *Spec) ValidateRequest(method, urlPath string, body []byte) []Violation {
	method = strings.ToUpper(method)
	c := &checker{spec: s, method: method, path: urlPath}
	pi, params := s.find(urlPath)
	if pi == nil {
		c.add("path", "no such path in the spec")
		return c.out
	}
	for name, val := range params {
		if re := s.paramRules[name]; re != nil && !re.MatchString(val) {
			c.add("path", fmt.Sprintf("parameter %s=%q does not match %s", name, val, re))
		}
	}
	op := pi.ops[method]
	if op == nil {
		c.add("method", fmt.Sprintf("%s is not an operation of %s", method, pi.template))
		return c.out
	}
	for name, val := range params {
		if sch := op.params[name]; sch != nil {
			c.validate(sch, val, "path parameter "+name, 0)
		}
	}
	hasBody := len(bytes.TrimSpace(body)) > 0
	switch {
	case op.body == nil && hasBody:
		c.add("body", "the operation takes no request body")
	case op.body != nil && !hasBody && op.bodyRequired:
		c.add("body", "the request body is required")
	case op.body != nil && hasBody:
		v, err := decodeJSON(body)
		if err != nil {
			c.add("body", "not valid JSON: "+err.Error())
			return c.out
		}
		c.validate(op.body, v, "", 0)
	}
	return c.out
}

// ValidateResponse checks a response body against the schema the spec gives
// for its status code. Unlike requests, responses may carry properties the
// schema does not name (servers emit fields their spec omits, e.g. Cloud
// Hypervisor's DeviceNode.parent). Only statuses the spec lists with a schema are
// checked; a body for a status the spec says has none is a violation.
func (s *Spec) ValidateResponse(method, urlPath string, status int, body []byte) []Violation {
	method = strings.ToUpper(method)
	c := &checker{spec: s, method: method, path: urlPath}
	pi, _ := s.find(urlPath)
	if pi == nil || pi.ops[method] == nil {
		return nil
	}
	sch, listed := pi.ops[method].responses[strconv.Itoa(status)]
	if !listed {
		return nil
	}
	hasBody := len(bytes.TrimSpace(body)) > 0
	switch {
	case sch == nil && hasBody:
		c.add("response", fmt.Sprintf("status %d has no body in the spec", status))
	case sch != nil && !hasBody:
		c.add("response", fmt.Sprintf("status %d needs a body", status))
	case sch != nil:
		v, err := decodeJSON(body)
		if err != nil {
			c.add("response", "not valid JSON: "+err.Error())
			return c.out
		}
		c.where = "response"
		c.lenient = true
		c.validate(sch, v, "", 0)
	}
	return c.out
}

// ValidateSchema checks a JSON value against a named schema
// (components/schemas or definitions), e.g. "NetworkInterface".
func (s *Spec) ValidateSchema(name string, body []byte) []Violation {
	c := &checker{spec: s, method: "-", path: name}
	sch := s.named(name)
	if sch == nil {
		c.add("schema", "no schema named "+name)
		return c.out
	}
	v, err := decodeJSON(body)
	if err != nil {
		c.add("body", "not valid JSON: "+err.Error())
		return c.out
	}
	c.validate(sch, v, "", 0)
	return c.out
}

func (s *Spec) named(name string) map[string]any {
	if comps := asMap(s.root["components"]); comps != nil {
		if sch := asMap(asMap(comps["schemas"])[name]); sch != nil {
			return sch
		}
	}
	return asMap(asMap(s.root["definitions"])[name])
}

// deref follows $ref chains ("#/a/b/c") inside the document.
func (s *Spec) deref(m map[string]any) map[string]any {
	for i := 0; m != nil && i < 32; i++ {
		ref, ok := m["$ref"].(string)
		if !ok {
			return m
		}
		m = s.lookup(ref)
	}
	return m
}

func (s *Spec) lookup(ref string) map[string]any {
	if !strings.HasPrefix(ref, "#/") {
		return nil
	}
	var cur any = s.root
	for _, part := range strings.Split(ref[2:], "/") {
		part = strings.ReplaceAll(strings.ReplaceAll(part, "~1", "/"), "~0", "~")
		cur = asMap(cur)[part]
	}
	return asMap(cur)
}

type checker struct {
	spec    *Spec
	method  string
	path    string
	where   string
	lenient bool // responses: properties the schema does not name are allowed
	out     []Violation
}

func (c *checker) add(where, msg string) {
	c.out = append(c.out, Violation{Method: c.method, Path: c.path, Where: where, Msg: msg})
}

func (c *checker) fail(ptr, msg string) {
	where := ptr
	if where == "" {
		where = "/"
	}
	if c.where != "" {
		where = c.where + " " + where
	}
	c.add(where, msg)
}

func (c *checker) validate(sch map[string]any, v any, ptr string, depth int) {
	if depth > 64 {
		c.fail(ptr, "schema nesting too deep")
		return
	}
	sch = c.spec.deref(sch)
	if sch == nil {
		return
	}
	for _, sub := range asList(sch["allOf"]) {
		c.validate(asMap(sub), v, ptr, depth+1)
	}
	if alts := asList(sch["oneOf"]); len(alts) > 0 {
		c.anyOf(alts, v, ptr, depth, true)
	}
	if alts := asList(sch["anyOf"]); len(alts) > 0 {
		c.anyOf(alts, v, ptr, depth, false)
	}
	if v == nil {
		if sch["nullable"] != true && sch["x-nullable"] != true {
			c.fail(ptr, "null is not allowed")
		}
		return
	}
	if enum := asList(sch["enum"]); len(enum) > 0 {
		found := false
		for _, e := range enum {
			if fmt.Sprint(e) == fmt.Sprint(scalar(v)) {
				found = true
				break
			}
		}
		if !found {
			c.fail(ptr, fmt.Sprintf("value %v is not one of %v", scalar(v), enum))
		}
	}
	typ := str(sch["type"])
	if typ == "" && (sch["properties"] != nil || sch["additionalProperties"] != nil) {
		typ = "object"
	}
	switch typ {
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			c.fail(ptr, "want an object, got "+kind(v))
			return
		}
		c.object(sch, obj, ptr, depth)
	case "array":
		arr, ok := v.([]any)
		if !ok {
			c.fail(ptr, "want an array, got "+kind(v))
			return
		}
		if n, ok := num(sch["minItems"]); ok && float64(len(arr)) < n {
			c.fail(ptr, fmt.Sprintf("fewer than %v items", n))
		}
		if n, ok := num(sch["maxItems"]); ok && float64(len(arr)) > n {
			c.fail(ptr, fmt.Sprintf("more than %v items", n))
		}
		if items := asMap(sch["items"]); items != nil {
			for i, it := range arr {
				c.validate(items, it, ptr+"/"+strconv.Itoa(i), depth+1)
			}
		}
	case "string":
		sv, ok := v.(string)
		if !ok {
			c.fail(ptr, "want a string, got "+kind(v))
			return
		}
		if n, ok := num(sch["minLength"]); ok && float64(len([]rune(sv))) < n {
			c.fail(ptr, fmt.Sprintf("shorter than %v", n))
		}
		if n, ok := num(sch["maxLength"]); ok && float64(len([]rune(sv))) > n {
			c.fail(ptr, fmt.Sprintf("longer than %v", n))
		}
		if p := str(sch["pattern"]); p != "" {
			if re, err := regexp.Compile(p); err == nil && !re.MatchString(sv) {
				c.fail(ptr, fmt.Sprintf("%q does not match pattern %s", sv, p))
			}
		}
	case "integer":
		n, ok := v.(json.Number)
		if !ok {
			c.fail(ptr, "want an integer, got "+kind(v))
			return
		}
		i, err := strconv.ParseInt(n.String(), 10, 64)
		if err != nil {
			if _, uerr := strconv.ParseUint(n.String(), 10, 64); uerr == nil && str(sch["format"]) == "uint64" {
				return
			}
			c.fail(ptr, fmt.Sprintf("%s is not an integer", n))
			return
		}
		if lo, hi, ok := formatRange(str(sch["format"])); ok && (float64(i) < lo || float64(i) > hi) {
			c.fail(ptr, fmt.Sprintf("%d out of range for %s", i, sch["format"]))
		}
		c.bounds(sch, float64(i), ptr)
	case "number":
		n, ok := v.(json.Number)
		if !ok {
			c.fail(ptr, "want a number, got "+kind(v))
			return
		}
		f, _ := n.Float64()
		c.bounds(sch, f, ptr)
	case "boolean":
		if _, ok := v.(bool); !ok {
			c.fail(ptr, "want a boolean, got "+kind(v))
		}
	}
}

func (c *checker) anyOf(alts []any, v any, ptr string, depth int, exactlyOne bool) {
	matched := 0
	for _, alt := range alts {
		sub := &checker{spec: c.spec, lenient: c.lenient}
		sub.validate(asMap(alt), v, ptr, depth+1)
		if len(sub.out) == 0 {
			matched++
		}
	}
	if matched == 0 || (exactlyOne && matched > 1) {
		c.fail(ptr, fmt.Sprintf("matches %d of %d alternatives", matched, len(alts)))
	}
}

func (c *checker) bounds(sch map[string]any, f float64, ptr string) {
	if lo, ok := num(sch["minimum"]); ok && f < lo {
		c.fail(ptr, fmt.Sprintf("%v is below the minimum %v", f, lo))
	}
	if hi, ok := num(sch["maximum"]); ok && f > hi {
		c.fail(ptr, fmt.Sprintf("%v is above the maximum %v", f, hi))
	}
}

func (c *checker) object(sch map[string]any, obj map[string]any, ptr string, depth int) {
	props := asMap(sch["properties"])
	// Properties named by allOf members count as known too.
	known := map[string]bool{}
	for k := range props {
		known[k] = true
	}
	for _, sub := range asList(sch["allOf"]) {
		for k := range asMap(c.spec.deref(asMap(sub))["properties"]) {
			known[k] = true
		}
	}
	for _, r := range asList(sch["required"]) {
		if _, ok := obj[str(r)]; !ok {
			c.fail(ptr, fmt.Sprintf("required property %q is missing", str(r)))
		}
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		val := obj[k]
		child := ptr + "/" + k
		if p := asMap(props[k]); p != nil {
			c.validate(p, val, child, depth+1)
			continue
		}
		if known[k] {
			continue // validated by the allOf member
		}
		switch ap := sch["additionalProperties"].(type) {
		case bool:
			if !ap {
				c.fail(ptr, fmt.Sprintf("unknown property %q", k))
			}
		case map[string]any:
			c.validate(ap, val, child, depth+1)
		default: // absent: strict for requests, lenient for responses
			if !c.lenient {
				c.fail(ptr, fmt.Sprintf("unknown property %q", k))
			}
		}
	}
}

func formatRange(f string) (lo, hi float64, ok bool) {
	switch f {
	case "int8":
		return -1 << 7, 1<<7 - 1, true
	case "uint8":
		return 0, 1<<8 - 1, true
	case "int16":
		return -1 << 15, 1<<15 - 1, true
	case "uint16":
		return 0, 1<<16 - 1, true
	case "int32":
		return -1 << 31, 1<<31 - 1, true
	case "uint32":
		return 0, 1<<32 - 1, true
	case "uint64":
		return 0, 1<<64 - 1, true
	}
	return 0, 0, false
}

func decodeJSON(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("trailing data after the JSON value")
	}
	return v, nil
}

func kind(v any) string {
	switch v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

func scalar(v any) any {
	if n, ok := v.(json.Number); ok {
		return n.String()
	}
	return v
}

// normalize turns yaml.v3's generic values into map[string]any / []any.
func normalize(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = normalize(e)
		}
		return t
	case map[any]any:
		m := make(map[string]any, len(t))
		for k, e := range t {
			m[fmt.Sprint(k)] = normalize(e)
		}
		return m
	case []any:
		for i, e := range t {
			t[i] = normalize(e)
		}
		return t
	}
	return v
}

func asMap(v any) map[string]any { m, _ := v.(map[string]any); return m }
func asList(v any) []any         { l, _ := v.([]any); return l }
func str(v any) string {
	if v == nil {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

func num(v any) (float64, bool) {
	switch n := v.(type) {
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	case uint64:
		return float64(n), true
	case float64:
		return n, true
	}
	return 0, false
}

func splitPath(p string) []string {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// urlPath returns the path part of a server URL ("http://localhost/api/v1" →
// "/api/v1").
func urlPath(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		u = u[i+3:]
		if j := strings.Index(u, "/"); j >= 0 {
			u = u[j:]
		} else {
			u = ""
		}
	}
	return strings.TrimSuffix(u, "/")
}
