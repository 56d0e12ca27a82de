package openapi

import (
	"errors"
	"strings"
	"testing"
)

const oas3 = `
openapi: 3.0.1
servers:
  - url: http://localhost/api/v1
paths:
  /thing.get:
    get:
      responses:
        200:
          content:
            application/json:
              schema:
                $ref: "#/components/schemas/Thing"
  /thing.put:
    put:
      requestBody:
        required: true
        content:
          application/json:
            schema:
              $ref: "#/components/schemas/Thing"
      responses:
        204:
          description: ok
  /thing.action:
    put:
      responses:
        204:
          description: ok
components:
  schemas:
    Thing:
      type: object
      required: [name]
      properties:
        name:
          type: string
          pattern: "^[a-z]+$"
        count:
          type: integer
          format: uint8
        ratio:
          type: number
          minimum: 0
          maximum: 1
        mode:
          type: string
          enum: [Fast, Slow]
        tags:
          type: array
          items:
            type: string
        labels:
          type: object
          additionalProperties:
            type: string
        child:
          $ref: "#/components/schemas/Child"
    Child:
      type: object
      properties:
        on:
          type: boolean
`

const swagger2 = `
swagger: "2.0"
basePath: "/"
paths:
  /:
    get:
      responses:
        200:
          schema:
            $ref: "#/definitions/Info"
  /items/{item_id}:
    put:
      parameters:
        - name: item_id
          in: path
          required: true
          type: string
        - name: body
          in: body
          required: true
          schema:
            $ref: "#/definitions/Item"
      responses:
        204:
          description: ok
  /items/special:
    get:
      responses:
        200:
          schema:
            $ref: "#/definitions/Info"
definitions:
  Info:
    type: object
    required: [state]
    properties:
      state:
        type: string
        enum: ["Not started", Running]
  Item:
    type: object
    required: [item_id]
    properties:
      item_id:
        type: string
      size:
        type: integer
        minimum: 68
        maximum: 65535
      extra:
        type: object
        additionalProperties: true
`

func mustParse(t *testing.T, doc string) *Spec {
	t.Helper()
	s, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestValidateRequest(t *testing.T) {
	s3 := mustParse(t, oas3)
	s2 := mustParse(t, swagger2)
	if err := s2.SetParamRule("item_id", `^[A-Za-z0-9_]+$`); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		spec   *Spec
		method string
		path   string
		body   string
		want   []string // substrings, one per expected violation; nil = valid
	}{
		{"valid full body", s3, "PUT", "/api/v1/thing.put", `{"name":"abc","count":255,"ratio":0.5,"mode":"Fast","tags":["a"],"labels":{"k":"v"},"child":{"on":true}}`, nil},
		{"valid minimal", s3, "PUT", "/api/v1/thing.put", `{"name":"a"}`, nil},
		{"unknown path", s3, "GET", "/api/v1/nope", ``, []string{"no such path"}},
		{"missing prefix", s3, "GET", "/thing.get", ``, []string{"no such path"}},
		{"wrong method", s3, "GET", "/api/v1/thing.put", ``, []string{"GET is not an operation"}},
		{"body required", s3, "PUT", "/api/v1/thing.put", ``, []string{"body is required"}},
		{"body not allowed", s3, "PUT", "/api/v1/thing.action", `{}`, []string{"takes no request body"}},
		{"invalid json", s3, "PUT", "/api/v1/thing.put", `{"name":`, []string{"not valid JSON"}},
		{"trailing data", s3, "PUT", "/api/v1/thing.put", `{"name":"a"} {}`, []string{"trailing data"}},
		{"missing required", s3, "PUT", "/api/v1/thing.put", `{"count":1}`, []string{`required property "name"`}},
		{"unknown property", s3, "PUT", "/api/v1/thing.put", `{"name":"a","fds":[3]}`, []string{`unknown property "fds"`}},
		{"nested unknown property", s3, "PUT", "/api/v1/thing.put", `{"name":"a","child":{"off":true}}`, []string{`unknown property "off"`}},
		{"wrong type string", s3, "PUT", "/api/v1/thing.put", `{"name":5}`, []string{"want a string"}},
		{"wrong type integer", s3, "PUT", "/api/v1/thing.put", `{"name":"a","count":"1"}`, []string{"want an integer"}},
		{"fraction for integer", s3, "PUT", "/api/v1/thing.put", `{"name":"a","count":1.5}`, []string{"not an integer"}},
		{"uint8 range", s3, "PUT", "/api/v1/thing.put", `{"name":"a","count":256}`, []string{"out of range for uint8"}},
		{"maximum", s3, "PUT", "/api/v1/thing.put", `{"name":"a","ratio":1.5}`, []string{"above the maximum"}},
		{"enum", s3, "PUT", "/api/v1/thing.put", `{"name":"a","mode":"Medium"}`, []string{"not one of"}},
		{"pattern", s3, "PUT", "/api/v1/thing.put", `{"name":"A-1"}`, []string{"does not match pattern"}},
		{"array items", s3, "PUT", "/api/v1/thing.put", `{"name":"a","tags":["x",1]}`, []string{"/tags/1: want a string"}},
		{"additionalProperties schema", s3, "PUT", "/api/v1/thing.put", `{"name":"a","labels":{"k":1}}`, []string{"/labels/k: want a string"}},
		{"null", s3, "PUT", "/api/v1/thing.put", `{"name":null}`, []string{"null is not allowed"}},
		{"two violations", s3, "PUT", "/api/v1/thing.put", `{"count":-1}`, []string{"out of range", `required property "name"`}},

		{"swagger valid", s2, "PUT", "/items/eth0", `{"item_id":"eth0","size":1500,"extra":{"anything":1}}`, nil},
		{"swagger root path", s2, "GET", "/", ``, nil},
		{"swagger literal beats template", s2, "GET", "/items/special", ``, nil},
		{"swagger unknown property", s2, "PUT", "/items/eth0", `{"item_id":"eth0","mtu":1500}`, []string{`unknown property "mtu"`}},
		{"swagger minimum", s2, "PUT", "/items/eth0", `{"item_id":"eth0","size":3}`, []string{"below the minimum 68"}},
		{"param rule", s2, "PUT", "/items/eth-0", `{"item_id":"eth-0"}`, []string{`item_id="eth-0" does not match`}},
		{"param rule applies without operation", s2, "DELETE", "/items/eth-0", ``, []string{"does not match", "DELETE is not an operation"}},
		{"swagger body required", s2, "PUT", "/items/x", ``, []string{"body is required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.spec.ValidateRequest(tt.method, tt.path, []byte(tt.body))
			if len(got) != len(tt.want) {
				t.Fatalf("got %d violations %v, want %d %q", len(got), got, len(tt.want), tt.want)
			}
			for _, w := range tt.want {
				found := false
				for _, v := range got {
					found = found || strings.Contains(v.String(), w)
				}
				if !found {
					t.Errorf("no violation mentions %q: %v", w, got)
				}
			}
		})
	}
}

func TestValidateResponse(t *testing.T) {
	s2 := mustParse(t, swagger2)
	s3 := mustParse(t, oas3)
	tests := []struct {
		name   string
		spec   *Spec
		method string
		path   string
		status int
		body   string
		bad    bool
	}{
		{"valid", s2, "GET", "/", 200, `{"state":"Running"}`, false},
		{"extra fields allowed in responses", s2, "GET", "/", 200, `{"state":"Running","new_field":1}`, false},
		{"enum", s2, "GET", "/", 200, `{"state":"Booting"}`, true},
		{"missing required", s2, "GET", "/", 200, `{}`, true},
		{"body for a no-body status", s3, "PUT", "/api/v1/thing.action", 204, `{}`, true},
		{"needs body", s3, "GET", "/api/v1/thing.get", 200, ``, true},
		{"unlisted status not checked", s3, "GET", "/api/v1/thing.get", 500, `["x"]`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.spec.ValidateResponse(tt.method, tt.path, tt.status, []byte(tt.body))
			if (len(got) > 0) != tt.bad {
				t.Fatalf("violations %v, want bad=%v", got, tt.bad)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, doc := range []string{"", "- a\n- b\n", "info: {}\n", "openapi: 3.0.1\npaths: {}\n", ":\n  - ]["} {
		if _, err := Parse([]byte(doc)); err == nil {
			t.Errorf("Parse(%q) = nil error", doc)
		}
	}
}

// loadReal loads a spec from ../shared/specs or skips the test.
func loadReal(t *testing.T, name string) *Spec {
	t.Helper()
	s, err := LoadNamed(name)
	if errors.Is(err, ErrNoSpec) {
		t.Skipf("skipped: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRealSpecsCatchBadBodies is the negative conformance test: the real
// upstream specs, loaded by this validator, reject what the adapters must
// never send.
func TestRealSpecsCatchBadBodies(t *testing.T) {
	ch := loadReal(t, CloudHypervisorSpec)
	fc := loadReal(t, FirecrackerSpec)
	if err := fc.SetParamRule("iface_id", `^[A-Za-z0-9_]{1,64}$`); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name         string
		spec         *Spec
		method, path string
		body         string
		want         string // "" = valid
	}{
		{"ch add-net valid", ch, "PUT", "/api/v1/vm.add-net", `{"tap":"vmnic1","mac":"02:00:0a:58:00:05","mtu":1500,"num_queues":2,"queue_size":256,"id":"vmnic_1"}`, ""},
		{"ch add-net unknown field", ch, "PUT", "/api/v1/vm.add-net", `{"tap":"vmnic1","fds":[3]}`, `unknown property "fds"`},
		{"ch add-net wrong type", ch, "PUT", "/api/v1/vm.add-net", `{"tap":"vmnic1","num_queues":"2"}`, "want an integer"},
		{"ch add-net uint8 range", ch, "PUT", "/api/v1/vm.add-net", `{"tap":"t","pci_device_id":300}`, "out of range for uint8"},
		{"ch add-net needs body", ch, "PUT", "/api/v1/vm.add-net", ``, "body is required"},
		{"ch add-net GET", ch, "GET", "/api/v1/vm.add-net", ``, "not an operation"},
		{"ch remove-device valid", ch, "PUT", "/api/v1/vm.remove-device", `{"id":"vmnic_1"}`, ""},
		{"ch remove-device wrong type", ch, "PUT", "/api/v1/vm.remove-device", `{"id":1}`, "want a string"},
		{"ch remove-device unknown field", ch, "PUT", "/api/v1/vm.remove-device", `{"id":"a","force":true}`, `unknown property "force"`},
		{"ch info", ch, "GET", "/api/v1/vm.info", ``, ""},
		{"ch ping", ch, "GET", "/api/v1/vmm.ping", ``, ""},
		{"ch ping with body", ch, "GET", "/api/v1/vmm.ping", `{}`, "takes no request body"},
		{"ch no prefix", ch, "GET", "/vm.info", ``, "no such path"},
		{"fc put valid", fc, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"vmnic1","guest_mac":"02:00:0a:58:00:05","mtu":1500}`, ""},
		{"fc put unknown field", fc, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"t","allow_mmds_requests":true}`, `unknown property "allow_mmds_requests"`},
		{"fc put wrong type", fc, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":7}`, "want a string"},
		{"fc put missing host_dev_name", fc, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0"}`, `required property "host_dev_name"`},
		{"fc put mtu too small", fc, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"t","mtu":10}`, "below the minimum"},
		{"fc put bad iface_id", fc, "PUT", "/network-interfaces/eth-0", `{"iface_id":"eth-0","host_dev_name":"t"}`, `iface_id="eth-0" does not match`},
		{"fc delete is not in the swagger", fc, "DELETE", "/network-interfaces/eth0", ``, "DELETE is not an operation"},
		{"fc instance info", fc, "GET", "/", ``, ""},
		{"fc version", fc, "GET", "/version", ``, ""},
		{"fc vm config", fc, "GET", "/vm/config", ``, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.spec.ValidateRequest(tt.method, tt.path, []byte(tt.body))
			if tt.want == "" {
				if len(got) != 0 {
					t.Fatalf("valid request rejected: %v", got)
				}
				return
			}
			if len(got) == 0 {
				t.Fatalf("bad request accepted, want a violation mentioning %q", tt.want)
			}
			found := false
			for _, v := range got {
				found = found || strings.Contains(v.String(), tt.want)
			}
			if !found {
				t.Fatalf("violations %v do not mention %q", got, tt.want)
			}
		})
	}
}

func TestSpecPathAbsent(t *testing.T) {
	_, err := SpecPath("no-such-spec.yaml")
	if !errors.Is(err, ErrNoSpec) {
		t.Fatalf("err = %v, want ErrNoSpec", err)
	}
	if !strings.Contains(err.Error(), "../shared/specs/no-such-spec.yaml") {
		t.Errorf("error does not say where the spec is expected: %v", err)
	}
}

// TestAddProperty: a property added to a named schema (a known gap, such
// as Cloud Hypervisor's RestoreConfig.net_fds) is validated by its schema;
// the rest of the object stays strict; a missing schema or a property the
// spec has already is an error.
func TestAddProperty(t *testing.T) {
	ch := loadReal(t, CloudHypervisorSpec)
	const restore = "/api/v1/vm.restore"
	if v := ch.ValidateRequest("PUT", restore, []byte(`{"source_url":"file:///s","net_fds":[{"id":"n","num_fds":1}]}`)); len(v) != 1 || !strings.Contains(v[0].Msg, `unknown property "net_fds"`) {
		t.Fatalf("net_fds before the patch: %v", v)
	}
	def := map[string]any{"type": "array", "items": map[string]any{"type": "object", "required": []any{"id"},
		"properties": map[string]any{"id": map[string]any{"type": "string"}, "num_fds": map[string]any{"type": "integer"}}}}
	if err := ch.AddProperty("RestoreConfig", "net_fds", def); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ body, want string }{
		{`{"source_url":"file:///s","net_fds":[{"id":"n","num_fds":1}]}`, ""},
		{`{"source_url":"file:///s","net_fds":[{"num_fds":1}]}`, `required property "id"`},
		{`{"source_url":"file:///s","net_fds":[{"id":"n","fds":[3]}]}`, `unknown property "fds"`},
		{`{"source_url":"file:///s","net_fds":[{"id":"n","num_fds":"1"}]}`, "want an integer"},
	} {
		v := ch.ValidateRequest("PUT", restore, []byte(tc.body))
		switch {
		case tc.want == "" && len(v) > 0:
			t.Errorf("%s: %v", tc.body, v)
		case tc.want != "" && (len(v) != 1 || !strings.Contains(v[0].Msg, tc.want)):
			t.Errorf("%s: %v, want %q", tc.body, v, tc.want)
		}
	}
	if err := ch.AddProperty("RestoreConfig", "net_fds", def); err == nil {
		t.Error("a property added twice")
	}
	if err := ch.AddProperty("NoSuchSchema", "x", def); err == nil {
		t.Error("a property added to a missing schema")
	}
}
