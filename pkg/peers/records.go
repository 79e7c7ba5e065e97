package peers

import (
	"context"
	"errors"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
)

// How routes and replicas look on kube-apiserver: Leases in the server's
// namespace. A route names the instance that holds one SockJS session; a
// replica Lease says an instance is alive and where it listens.
const (
	componentLabel   = "app.kubernetes.io/component"
	componentRoute   = "console-route"
	componentReplica = "console-replica"
	managedByLabel   = "app.kubernetes.io/managed-by"
	managedBy        = "console-apiserver"
	instanceLabel    = "consoles.kubecube.io/instance"
	addressAnno      = "consoles.kubecube.io/peer-address"
	replicaAnno      = "consoles.kubecube.io/replica"

	routePrefix   = "console-route-"
	replicaPrefix = "console-replica-"
)

type routeRecord struct {
	name     string
	uid      types.UID
	instance string
	address  string
}

func routeName(key string) string { return routePrefix + key }

func recordOf(l *coordinationv1.Lease) *routeRecord {
	rec := &routeRecord{name: l.Name, uid: l.UID, address: l.Annotations[addressAnno]}
	if l.Spec.HolderIdentity != nil {
		rec.instance = *l.Spec.HolderIdentity
	}
	return rec
}

func (p *Peers) getRoute(ctx context.Context, key string) (*routeRecord, error) {
	l, err := p.leases.Get(ctx, routeName(key), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	return recordOf(l), nil
}

// createRoute makes this instance the session's owner, or returns the owner
// that got there first.
func (p *Peers) createRoute(ctx context.Context, key string) (created bool, rec *routeRecord, err error) {
	now := metav1.NewMicroTime(p.now())
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:        routeName(key),
			Labels:      map[string]string{componentLabel: componentRoute, managedByLabel: managedBy, instanceLabel: p.instance},
			Annotations: map[string]string{addressAnno: p.cfg.Address},
		},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &p.instance, AcquireTime: &now},
	}
	got, err := p.leases.Create(ctx, l, metav1.CreateOptions{})
	if err == nil {
		return true, recordOf(got), nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return false, nil, err
	}
	rec, err = p.getRoute(ctx, key)
	if err == nil && rec == nil {
		// Created and deleted in between: the session it was for is over.
		err = errors.New("the session's route vanished while being created")
	}
	return false, rec, err
}

func (p *Peers) deleteRoute(ctx context.Context, name string, uid types.UID) error {
	err := p.leases.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}

func (p *Peers) deleteOwnRoutes(ctx context.Context) error {
	sel := labels.Set{componentLabel: componentRoute, managedByLabel: managedBy, instanceLabel: p.instance}
	list, err := p.leases.List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return err
	}
	var errs []error
	for i := range list.Items {
		errs = append(errs, p.deleteRoute(ctx, list.Items[i].Name, list.Items[i].UID))
	}
	return errors.Join(errs...)
}

// heartbeatState is this replica's own Lease as last written.
type heartbeatState struct {
	lease *coordinationv1.Lease
}

func (p *Peers) heartbeatName() string { return replicaPrefix + p.instance }

func (p *Peers) runHeartbeat(ctx context.Context) {
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		hctx, cancel := context.WithTimeout(ctx, p.cfg.Heartbeat)
		defer cancel()
		if err := p.renewHeartbeat(hctx); err != nil {
			klog.ErrorS(err, "Renewing this replica's Lease")
		}
	}, p.cfg.Heartbeat)
}

func (p *Peers) renewHeartbeat(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	hb := p.hb
	p.mu.Unlock()
	now := metav1.NewMicroTime(p.now())
	if hb != nil {
		l := hb.lease.DeepCopy()
		l.Spec.RenewTime = &now
		got, err := p.leases.Update(ctx, l, metav1.UpdateOptions{})
		if err == nil {
			p.mu.Lock()
			p.hb = &heartbeatState{lease: got}
			p.mu.Unlock()
			return nil
		}
		if !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return err
		}
		// Deleted by a sweep that thought us dead (no renewal for a lease
		// duration), or changed by someone: write it afresh, and the routes
		// of the sessions still here, which that sweep deleted too.
		if err := p.leases.Delete(ctx, p.heartbeatName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		defer p.republish(ctx)
	}
	secs := int32(p.cfg.LeaseDuration / time.Second)
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:        p.heartbeatName(),
			Labels:      map[string]string{componentLabel: componentReplica, managedByLabel: managedBy, instanceLabel: p.instance},
			Annotations: map[string]string{addressAnno: p.cfg.Address, replicaAnno: p.cfg.ReplicaName},
		},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       &p.instance,
			LeaseDurationSeconds: &secs,
			AcquireTime:          &now,
			RenewTime:            &now,
		},
	}
	got, err := p.leases.Create(ctx, l, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.hb = &heartbeatState{lease: got}
	p.mu.Unlock()
	return nil
}

// republish recreates the routes of the sessions held here. A route taken
// meanwhile by another replica means a client came back there and was given
// a new session; this one is left to end.
func (p *Peers) republish(ctx context.Context) {
	p.mu.Lock()
	keys := make([]string, 0, len(p.owned))
	for k := range p.owned {
		keys = append(keys, k)
	}
	p.mu.Unlock()
	for _, key := range keys {
		created, rec, err := p.createRoute(ctx, key)
		if err != nil {
			klog.ErrorS(err, "Republishing a route", "route", routeName(key))
			continue
		}
		p.mu.Lock()
		if e := p.owned[key]; e != nil && (created || rec.instance == p.instance) {
			e.lease, e.uid = rec.name, rec.uid
		}
		p.mu.Unlock()
	}
}

func (p *Peers) deleteHeartbeat(ctx context.Context) error {
	err := p.leases.Delete(ctx, p.heartbeatName(), metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func (p *Peers) runSweeper(ctx context.Context) {
	wait.JitterUntilWithContext(ctx, func(ctx context.Context) {
		sctx, cancel := context.WithTimeout(ctx, p.cfg.Sweep)
		defer cancel()
		if n, err := p.sweep(sctx); err != nil {
			klog.ErrorS(err, "Sweeping routes of dead replicas", "deleted", n)
		} else if n > 0 {
			klog.V(2).InfoS("Swept routes", "deleted", n)
		}
	}, p.cfg.Sweep, 0.2, false)
}

// sweep deletes the routes of replicas whose Lease has expired, the expired
// replica Leases, and routes of this instance no session here uses any
// longer (a delete the janitor failed at). Every replica sweeps; deletes with
// preconditions make that harmless.
func (p *Peers) sweep(ctx context.Context) (int, error) {
	now := p.now()
	// Some slack for clocks and for a renewal in flight.
	slack := p.cfg.Heartbeat
	replicas, err := p.leases.List(ctx, metav1.ListOptions{
		LabelSelector:   labels.Set{componentLabel: componentReplica, managedByLabel: managedBy}.String(),
		ResourceVersion: "0",
	})
	if err != nil {
		return 0, err
	}
	live := sets.New(p.instance)
	deleted := 0
	var errs []error
	for i := range replicas.Items {
		l := &replicas.Items[i]
		inst := l.Labels[instanceLabel]
		if alive(l, now, slack) {
			live.Insert(inst)
			continue
		}
		if inst == p.instance {
			continue
		}
		if err := p.deleteRoute(ctx, l.Name, l.UID); err != nil {
			errs = append(errs, err)
		} else {
			deleted++
		}
	}
	routes, err := p.leases.List(ctx, metav1.ListOptions{
		LabelSelector:   labels.Set{componentLabel: componentRoute, managedByLabel: managedBy}.String(),
		ResourceVersion: "0",
	})
	if err != nil {
		return deleted, errors.Join(append(errs, err)...)
	}
	mine := p.ownedLeases()
	for i := range routes.Items {
		l := &routes.Items[i]
		inst := l.Labels[instanceLabel]
		// A route younger than a lease duration may belong to a replica
		// whose own Lease this (cached) list does not show yet.
		young := now.Sub(l.CreationTimestamp.Time) < p.cfg.LeaseDuration+slack
		stale := false
		switch {
		case inst == p.instance:
			stale = !mine.Has(l.Name) && now.Sub(l.CreationTimestamp.Time) > p.cfg.Grace+slack
		case !live.Has(inst):
			stale = !young
		}
		if !stale {
			continue
		}
		if err := p.deleteRoute(ctx, l.Name, l.UID); err != nil {
			errs = append(errs, err)
		} else {
			deleted++
		}
	}
	return deleted, errors.Join(errs...)
}

func alive(l *coordinationv1.Lease, now time.Time, slack time.Duration) bool {
	if l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return false
	}
	until := l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second + slack)
	return now.Before(until)
}

func (p *Peers) ownedLeases() sets.Set[string] {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := sets.New[string]()
	for _, e := range p.owned {
		s.Insert(e.lease)
	}
	return s
}
