// Command peer-tcredirect is the benchmark's stand-in for awslabs/tc-redirect-tap
// (whose module the Go module proxy does not serve): a chained CNI plugin
// whose ADD does what tc-redirect-tap's ADD does and no more, so that
// vmnic's ADD can be measured against it on any machine. It is a test
// binary, not product.
//
// ADD, as tc-redirect-tap's plugin.add (cmd/tc-redirect-tap/main.go and
// internal/netlink.go at awslabs/tc-redirect-tap 34bf829), all in CNI_NETNS:
// look up CNI_IFNAME; create a TAP (netlink Tuntap, one queue, vnet header,
// owner and group = the plugin's euid and egid, name chosen by the kernel)
// with the veth's MTU and set it up; add an ingress qdisc on the TAP and on
// the veth; add a u32 match-all filter with a mirred egress redirect each
// way (no priority, no handle); print prevResult with the TAP and the
// "VM interface" (the TAP's name, sandbox = CNI_CONTAINERID, the veth's
// MAC) appended and the veth's IPs copied onto the latter. No state file.
//
// DEL, as tc-redirect-tap's: success when the netns is gone; remove the
// veth's ingress qdisc; delete the TAP named in prevResult when there is one.
// CHECK is not implemented (success): the benchmark does not measure it.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: add, Del: del, Check: func(*skel.CmdArgs) error { return nil }},
		version.All, "peer-tcredirect: the benchmark's tc-redirect-tap stand-in")
}

// conf is the chained conf: only prevResult is read.
type conf struct {
	types.NetConf
}

func loadConf(args *skel.CmdArgs) (*conf, *current.Result, error) {
	c := &conf{}
	if err := json.Unmarshal(args.StdinData, c); err != nil {
		return nil, nil, fmt.Errorf("parse conf: %w", err)
	}
	if err := version.ParsePrevResult(&c.NetConf); err != nil {
		return nil, nil, err
	}
	if c.PrevResult == nil {
		return c, nil, nil
	}
	prev, err := current.NewResultFromResult(c.PrevResult)
	if err != nil {
		return nil, nil, err
	}
	return c, prev, nil
}

func add(args *skel.CmdArgs) error {
	c, prev, err := loadConf(args)
	if err != nil {
		return err
	}
	if prev == nil {
		return errors.New("no previous result was found, was this plugin chained with a previous one?")
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", args.Netns, err)
	}
	defer netns.Close()
	res := prev
	err = netns.Do(func(ns.NetNS) error {
		veth, err := netlink.LinkByName(args.IfName)
		if err != nil {
			return fmt.Errorf("find %s: %w", args.IfName, err)
		}
		var vethIPs []*current.IPConfig
		for _, ip := range res.IPs {
			if ip.Interface != nil && *ip.Interface < len(res.Interfaces) {
				itf := res.Interfaces[*ip.Interface]
				if itf.Name == args.IfName && itf.Sandbox == args.Netns {
					vethIPs = append(vethIPs, ip)
				}
			}
		}
		tap, err := createTap(veth.Attrs().MTU, os.Geteuid(), os.Getegid())
		if err != nil {
			return err
		}
		for _, l := range []netlink.Link{tap, veth} {
			if err := netlink.QdiscAdd(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
				LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_INGRESS,
			}}); err != nil {
				return fmt.Errorf("ingress qdisc on %s: %w", l.Attrs().Name, err)
			}
		}
		for _, p := range [][2]netlink.Link{{tap, veth}, {veth, tap}} {
			if err := netlink.FilterAdd(redirect(p[0], p[1])); err != nil {
				return fmt.Errorf("redirect %s -> %s: %w", p[0].Attrs().Name, p[1].Attrs().Name, err)
			}
		}
		res.Interfaces = append(res.Interfaces,
			&current.Interface{Name: tap.Attrs().Name, Mac: tap.Attrs().HardwareAddr.String(), Sandbox: args.Netns},
			&current.Interface{Name: tap.Attrs().Name, Mac: veth.Attrs().HardwareAddr.String(), Sandbox: args.ContainerID})
		vm := len(res.Interfaces) - 1
		for _, ip := range vethIPs {
			cp := *ip
			cp.Interface = &vm
			res.IPs = append(res.IPs, &cp)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return types.PrintResult(res, c.CNIVersion)
}

// createTap is tc-redirect-tap's CreateTap: a netlink Tuntap (the kernel
// names it), MTU, then up, in three requests as there.
func createTap(mtu, uid, gid int) (netlink.Link, error) {
	t := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: ""},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_ONE_QUEUE | netlink.TUNTAP_VNET_HDR,
		Queues:    1,
		Owner:     uint32(uid),
		Group:     uint32(gid),
	}
	if err := netlink.LinkAdd(t); err != nil {
		return nil, fmt.Errorf("create tap: %w", err)
	}
	for _, f := range t.Fds {
		f.Close()
	}
	link, err := netlink.LinkByName(t.Name)
	if err != nil {
		return nil, fmt.Errorf("find tap %s: %w", t.Name, err)
	}
	if err := netlink.LinkSetMTU(link, mtu); err != nil {
		return nil, fmt.Errorf("set mtu of %s: %w", t.Name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up: %w", t.Name, err)
	}
	return link, nil
}

// redirect is tc-redirect-tap's AddRedirectFilter: u32 match-all on the
// ingress qdisc of from, mirred egress redirect to to.
func redirect(from, to netlink.Link) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from.Attrs().Index,
			Parent:    netlink.MakeHandle(0xffff, 0),
			Protocol:  unix.ETH_P_ALL,
		},
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to.Attrs().Index,
		}},
	}
}

func del(args *skel.CmdArgs) error {
	_, prev, err := loadConf(args)
	if err != nil {
		return err
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		var gone ns.NSPathNotExistErr
		if errors.As(err, &gone) {
			return nil
		}
		return err
	}
	defer netns.Close()
	return netns.Do(func(ns.NetNS) error {
		var errs []error
		if veth, err := netlink.LinkByName(args.IfName); err == nil {
			q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: veth.Attrs().Index, Parent: netlink.HANDLE_INGRESS}}
			if err := netlink.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, err)
			}
		}
		if prev != nil {
			for _, itf := range prev.Interfaces {
				if itf.Sandbox != args.ContainerID {
					continue
				}
				if l, err := netlink.LinkByName(itf.Name); err == nil {
					if err := netlink.LinkDel(l); err != nil {
						errs = append(errs, err)
					}
				}
			}
		}
		return errors.Join(errs...)
	})
}
