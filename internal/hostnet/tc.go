package hostnet

import (
	"errors"
	"fmt"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// FilterPriority is the tc priority ("pref") of vmnic's redirect filters.
// It tells them apart from anybody else's filters on the same hook, so vmnic
// removes only its own. It is lower than tc's default (49152), so vmnic's
// redirect runs before filters added without a priority.
const FilterPriority uint16 = 0x766e // 30318, "vn"

// ingressParent is the ingress hook (ffff:fff2): valid under both an ingress
// and a clsact qdisc.
const ingressParent = netlink.HANDLE_MIN_INGRESS

// qdiscAddAttempts bounds the EBUSY retries of a qdisc add (the kernel
// answers EBUSY while a concurrent qdisc change on the device settles).
const qdiscAddAttempts = 8

// EnsureIngress makes sure link has an ingress hook: an existing ingress or
// clsact qdisc is used as is; otherwise an ingress qdisc is added, and
// created reports that (so that only vmnic's own qdisc is ever removed).
func EnsureIngress(link netlink.Link) (created bool, err error) {
	return (*Conn)(nil).EnsureIngress(link)
}

// EnsureIngress is the package's EnsureIngress on c.
func (c *Conn) EnsureIngress(link netlink.Link) (created bool, err error) {
	name := link.Attrs().Name
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: link.Attrs().Index,
		Handle:    netlink.MakeHandle(0xffff, 0),
		Parent:    netlink.HANDLE_INGRESS,
	}}
	wait := 2 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err = c.handle().QdiscAdd(q)
		if err == nil {
			return true, nil
		}
		if errors.Is(err, unix.EEXIST) {
			kind, lerr := c.ingressKind(link)
			if lerr != nil {
				return false, fmt.Errorf("ingress qdisc on %s: %w", name, lerr)
			}
			if kind == "ingress" || kind == "clsact" {
				return false, nil
			}
			return false, fmt.Errorf("ingress qdisc on %s: the ingress hook holds a %q qdisc", name, kind)
		}
		if !errors.Is(err, unix.EBUSY) || attempt >= qdiscAddAttempts {
			return false, fmt.Errorf("add ingress qdisc on %s: %w", name, err)
		}
		time.Sleep(wait)
		wait *= 2
	}
}

// ingressKind is the kind of the qdisc on link's ingress hook ("" if none).
func ingressKind(link netlink.Link) (string, error) { return (*Conn)(nil).ingressKind(link) }

func (c *Conn) ingressKind(link netlink.Link) (string, error) {
	qs, err := c.qdiscList(link)
	if err != nil {
		return "", err
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_INGRESS {
			return q.Type(), nil
		}
	}
	return "", nil
}

// IngressKind is the kind of the qdisc on link's ingress hook ("ingress",
// "clsact", or "" when there is none).
func IngressKind(link netlink.Link) (string, error) { return ingressKind(link) }

// IngressKind is the package's IngressKind on c.
func (c *Conn) IngressKind(link netlink.Link) (string, error) { return c.ingressKind(link) }

// AddRedirect adds vmnic's filter on from's ingress hook: u32 match-all,
// action mirred egress redirect to to, TC_ACT_STOLEN.
func AddRedirect(from, to netlink.Link) error { return (*Conn)(nil).AddRedirect(from, to) }

// AddRedirect is the package's AddRedirect on c.
func (c *Conn) AddRedirect(from, to netlink.Link) error {
	f := &netlink.U32{
		FilterAttrs: ingressAttrs(from, FilterPriority),
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to.Attrs().Index,
		}},
	}
	if err := c.handle().FilterAdd(f); err != nil {
		return fmt.Errorf("add redirect filter %s -> %s: %w", from.Attrs().Name, to.Attrs().Name, err)
	}
	return nil
}

// DelRedirect removes vmnic's filters from link's ingress hook: the
// redirect at FilterPriority, whatever its kind (u32 or cls_bpf: a record's
// data path may lag behind what a crashed ADD attached), and a quiesced
// NIC's drop (QuiescePriority), so that every removal path also clears a
// quiesced NIC. Nothing to remove is not an error.
func DelRedirect(link netlink.Link) error {
	return errors.Join(delVethRedirect(link), delFilter(link, QuiescePriority))
}

// delVethRedirect removes vmnic's redirect at FilterPriority, u32 or
// cls_bpf.
func delVethRedirect(link netlink.Link) error {
	return errors.Join(delFilter(link, FilterPriority), DelBPFRedirect(link))
}

// delFilter removes the filters of priority prio (the redirect's u32 at
// FilterPriority, the drop's bpf at QuiescePriority) from link's ingress
// hook.
func delFilter(link netlink.Link, prio uint16) error {
	attrs := ingressAttrs(link, prio)
	var f netlink.Filter = &netlink.U32{FilterAttrs: attrs}
	if prio == QuiescePriority {
		f = &netlink.BpfFilter{FilterAttrs: attrs}
	}
	// A kind that does not match the filter at that priority is EINVAL.
	err := netlink.FilterDel(f)
	if err == nil || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENODEV) {
		return nil
	}
	return fmt.Errorf("remove vmnic's tc filter (pref %d) on %s: %w", prio, link.Attrs().Name, err)
}

// HasRedirect reports whether link's ingress hook has vmnic's redirect to
// the device with index toIndex, on either data path (u32 + mirred, or
// cls_bpf with bpf_redirect or bpf_redirect_peer).
func HasRedirect(link netlink.Link, toIndex int) (bool, error) {
	return hasFilter(link, func(f netlink.Filter) (bool, error) {
		if isU32Redirect(f, toIndex) {
			return true, nil
		}
		for _, h := range []BPFHelper{HelperRedirect, HelperRedirectPeer} {
			if ok, err := isBPFRedirect(f, toIndex, h); ok || err != nil {
				return ok, err
			}
		}
		return false, nil
	})
}

// ingressAttrs are the attributes of vmnic's filter at priority prio on
// link's ingress hook (every protocol).
func ingressAttrs(link netlink.Link, prio uint16) netlink.FilterAttrs {
	return netlink.FilterAttrs{
		LinkIndex: link.Attrs().Index,
		Parent:    ingressParent,
		Priority:  prio,
		Protocol:  unix.ETH_P_ALL,
	}
}

// hasFilter reports whether a filter on link's ingress hook matches; the
// first match or match error ends the search.
func hasFilter(link netlink.Link, match func(netlink.Filter) (bool, error)) (bool, error) {
	fs, err := ingressFilters(link)
	if err != nil {
		return false, err
	}
	for _, f := range fs {
		if ok, err := match(f); ok || err != nil {
			return ok, err
		}
	}
	return false, nil
}

// ingressFilters lists the filters on link's ingress hook; a link with no
// ingress hook at all (EINVAL, ENOENT) has none.
func ingressFilters(link netlink.Link) ([]netlink.Filter, error) {
	fs, err := netlinksafe.FilterList(link, ingressParent)
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("list filters on %s: %w", link.Attrs().Name, err)
	}
	return fs, nil
}

// hasU32Redirect: link's ingress hook has vmnic's u32 + mirred redirect to toIndex.
func hasU32Redirect(link netlink.Link, toIndex int) (bool, error) {
	return hasFilter(link, func(f netlink.Filter) (bool, error) { return isU32Redirect(f, toIndex), nil })
}

func isU32Redirect(f netlink.Filter, toIndex int) bool {
	u, ok := f.(*netlink.U32)
	if !ok || u.Priority != FilterPriority {
		return false
	}
	if u.RedirIndex == toIndex {
		return true
	}
	for _, a := range u.Actions {
		if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR && m.Ifindex == toIndex {
			return true
		}
	}
	return false
}

// RemoveIngressIfEmpty deletes link's ingress qdisc when it is a plain
// ingress qdisc with no filters left. Call it only for a qdisc vmnic added.
func RemoveIngressIfEmpty(link netlink.Link) error {
	kind, err := ingressKind(link)
	if err != nil {
		return fmt.Errorf("ingress qdisc on %s: %w", link.Attrs().Name, err)
	}
	if kind != "ingress" {
		return nil
	}
	fs, err := netlinksafe.FilterList(link, ingressParent)
	if err != nil {
		return fmt.Errorf("list filters on %s: %w", link.Attrs().Name, err)
	}
	if len(fs) > 0 {
		return nil
	}
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: link.Attrs().Index,
		Handle:    netlink.MakeHandle(0xffff, 0),
		Parent:    netlink.HANDLE_INGRESS,
	}}
	if err := netlink.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("remove ingress qdisc on %s: %w", link.Attrs().Name, err)
	}
	return nil
}
