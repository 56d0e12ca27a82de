module github.com/vmnic/vmnic/soak

go 1.26.8

replace github.com/vmnic/vmnic => ../

require (
	github.com/containernetworking/cni v1.3.1
	github.com/vmnic/vmnic v0.0.0-00010101000000-000000000000
)

require (
	github.com/cilium/ebpf v0.22.0 // indirect
	github.com/containernetworking/plugins v1.9.1 // indirect
	github.com/coreos/go-iptables v0.8.0 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	github.com/vishvananda/netlink v1.3.1 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	go.opentelemetry.io/otel v1.31.0 // indirect
	go.opentelemetry.io/otel/trace v1.31.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)
