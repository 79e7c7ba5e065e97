package session

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

const storeNS = "kubecube-console"

// newFakeCluster is a fake clientset that, unlike the stock one, gives
// objects a UID and a resourceVersion and enforces delete preconditions: the
// claim's single use rests on them. (The real plane is in test/scaleout.)
func newFakeCluster() *fake.Clientset {
	cs := fake.NewClientset()
	var rv atomic.Int64
	cs.PrependReactor("create", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		obj := a.(k8stesting.CreateAction).GetObject().(metav1.Object)
		obj.SetUID(types.UID(fmt.Sprintf("uid-%d", rv.Add(1))))
		obj.SetResourceVersion(fmt.Sprint(rv.Add(1)))
		return false, nil, nil
	})
	cs.PrependReactor("delete", "secrets", func(a k8stesting.Action) (bool, runtime.Object, error) {
		da := a.(k8stesting.DeleteActionImpl)
		pre := da.DeleteOptions.Preconditions
		if pre == nil {
			return false, nil, nil
		}
		obj, err := cs.Tracker().Get(corev1.SchemeGroupVersion.WithResource("secrets"), da.Namespace, da.Name)
		if err != nil {
			return true, nil, err
		}
		m := obj.(metav1.Object)
		if (pre.UID != nil && *pre.UID != m.GetUID()) || (pre.ResourceVersion != nil && *pre.ResourceVersion != m.GetResourceVersion()) {
			return true, nil, apierrors.NewConflict(corev1.Resource("secrets"), da.Name, errors.New("precondition failed"))
		}
		return false, nil, nil
	})
	return cs
}

// replicas are KubeStores sharing one cluster and one clock, as replicas do.
func replicas(n int, l Limits) ([]*KubeStore, *fake.Clientset, *fakeClock) {
	cs := newFakeCluster()
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	out := make([]*KubeStore, n)
	for i := range out {
		out[i] = NewKubeStore(cs.CoreV1().Secrets(storeNS), l, clock.Now)
	}
	return out, cs, clock
}

func kubeCreate(t *testing.T, k *KubeStore, owner Identity) Session {
	t.Helper()
	s, err := k.Create(Session{Owner: owner, Target: Target{Cluster: "east", Namespace: "ns", Pod: "pod", Container: "app"}, Command: []string{"sh", "-c", "x"}, TTY: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func secretsIn(t *testing.T, cs *fake.Clientset) []corev1.Secret {
	t.Helper()
	list, err := cs.CoreV1().Secrets(storeNS).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

func TestKubeStoreClaimOnAnotherReplica(t *testing.T) {
	r, cs, clock := replicas(2, Limits{TTL: 30 * time.Second})
	s := kubeCreate(t, r[0], alice)
	if !ValidID(s.ID) || !s.Expires.Equal(clock.Now().Add(30*time.Second)) {
		t.Fatalf("created %+v", s)
	}

	secs := secretsIn(t, cs)
	if len(secs) != 1 {
		t.Fatalf("%d secrets, want 1", len(secs))
	}
	sec := secs[0]
	if sec.Name != SecretName(s.ID) || sec.Type != KubeSecretType || sec.Immutable == nil || !*sec.Immutable {
		t.Fatalf("secret %s type %s immutable %v", sec.Name, sec.Type, sec.Immutable)
	}
	// The ID is a bearer capability: it is nowhere in what is stored.
	raw, _ := json.Marshal(sec)
	if strings.Contains(string(raw), s.ID) {
		t.Fatalf("the stored secret reveals the session ID: %s", raw)
	}
	if sec.Labels[KubeOwnerLabel] != ownerHash("alice") {
		t.Fatalf("owner label %q", sec.Labels[KubeOwnerLabel])
	}

	// Group order is not significant; everything else is carried exactly.
	reordered := alice
	reordered.Groups = []string{"system:authenticated", "devs"}
	got, release, err := r[1].Claim(s.ID, reordered, "ns", "pod")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if !got.Owner.Equal(alice) || got.Owner.UID != "u-1" || got.Target != s.Target || !got.TTY ||
		strings.Join(got.Command, " ") != "sh -c x" || !got.Expires.Equal(s.Expires) || got.ID != s.ID {
		t.Fatalf("claimed %+v, created %+v", got, s)
	}
	if n := len(secretsIn(t, cs)); n != 0 {
		t.Fatalf("%d secrets left after the claim", n)
	}
	for _, k := range r {
		if _, _, err := k.Claim(s.ID, alice, "ns", "pod"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("second claim: %v, want ErrNotFound", err)
		}
	}
}

func TestKubeStoreMismatchBurns(t *testing.T) {
	r, _, _ := replicas(2, Limits{TTL: time.Minute})
	for name, try := range map[string]func(id string) error{
		"other user": func(id string) error { _, _, err := r[1].Claim(id, bob, "ns", "pod"); return err },
		"other uid": func(id string) error {
			o := alice
			o.UID = "u-2"
			_, _, err := r[1].Claim(id, o, "ns", "pod")
			return err
		},
		"fewer extra": func(id string) error {
			o := alice
			o.Extra = nil
			_, _, err := r[1].Claim(id, o, "ns", "pod")
			return err
		},
		"other extra": func(id string) error {
			o := alice
			o.Extra = map[string][]string{"scopes": {"a", "c"}}
			_, _, err := r[1].Claim(id, o, "ns", "pod")
			return err
		},
		"other group": func(id string) error {
			o := alice
			o.Groups = []string{"devs", "system:masters"}
			_, _, err := r[1].Claim(id, o, "ns", "pod")
			return err
		},
		"other pod": func(id string) error { _, _, err := r[1].Claim(id, alice, "ns", "other"); return err },
		"other ns":  func(id string) error { _, _, err := r[1].Claim(id, alice, "other", "pod"); return err },
	} {
		s := kubeCreate(t, r[0], alice)
		if err := try(s.ID); !errors.Is(err, ErrNotOwner) {
			t.Fatalf("%s: %v, want ErrNotOwner", name, err)
		}
		if _, _, err := r[0].Claim(s.ID, alice, "ns", "pod"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: the owner's claim after a mismatch: %v, want ErrNotFound (burnt)", name, err)
		}
	}
}

func TestKubeStoreExpiryAndSweep(t *testing.T) {
	r, cs, clock := replicas(2, Limits{TTL: 30 * time.Second})
	old := kubeCreate(t, r[0], alice)
	clock.Add(20 * time.Second)
	kubeCreate(t, r[0], bob) // expires at 50s
	clock.Add(10 * time.Second)
	if _, _, err := r[1].Claim(old.ID, alice, "ns", "pod"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("claim at expiry: %v, want ErrNotFound", err)
	}
	kubeCreate(t, r[1], alice) // expires at 60s
	clock.Add(30 * time.Second)
	n, err := r[1].Sweep(t.Context())
	if err != nil || n != 2 {
		t.Fatalf("sweep deleted %d (%v), want the 2 expired", n, err)
	}
	if left := secretsIn(t, cs); len(left) != 0 {
		t.Fatalf("left %d", len(left))
	}

	// A live session survives a sweep.
	live := kubeCreate(t, r[0], alice)
	if n, err := r[1].Sweep(t.Context()); err != nil || n != 0 {
		t.Fatalf("sweep of a live session deleted %d (%v)", n, err)
	}
	if _, release, err := r[1].Claim(live.ID, alice, "ns", "pod"); err != nil {
		t.Fatal(err)
	} else {
		release()
	}
}

func TestKubeStoreMalformedIDs(t *testing.T) {
	r, cs, _ := replicas(1, Limits{})
	for _, id := range []string{"", "short", strings.Repeat("G", 32), strings.Repeat("A", 32), "../" + strings.Repeat("a", 29)} {
		if _, _, err := r[0].Claim(id, alice, "ns", "pod"); !errors.Is(err, ErrInvalidID) {
			t.Fatalf("%q: %v, want ErrInvalidID", id, err)
		}
	}
	if n := len(cs.Actions()); n != 0 {
		t.Fatalf("malformed IDs reached kube-apiserver (%d calls)", n)
	}
	if _, _, err := r[0].Claim(NewID(), alice, "ns", "pod"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown ID: %v", err)
	}
}

func TestKubeStorePendingLimitIsShared(t *testing.T) {
	r, _, clock := replicas(3, Limits{TTL: 30 * time.Second, MaxPendingPerUser: 2})
	kubeCreate(t, r[0], alice)
	kubeCreate(t, r[1], alice)
	_, err := r[2].Create(Session{Owner: alice, Target: Target{Namespace: "ns", Pod: "pod"}})
	var le *LimitError
	if !errors.As(err, &le) || le.Limit != "max-pending-sessions-per-user" || le.Max != 2 {
		t.Fatalf("third pending session on a third replica: %v, want the pending limit", err)
	}
	// Another user is not affected; expiry frees the slots.
	kubeCreate(t, r[2], bob)
	clock.Add(31 * time.Second)
	kubeCreate(t, r[2], alice)
}

func TestKubeStoreActiveLimitsArePerReplica(t *testing.T) {
	r, _, _ := replicas(2, Limits{TTL: time.Minute, MaxActivePerUser: 1, MaxActive: 2})
	// Created on one replica, claimed on the other: the claimer counts.
	claim := func(creator, claimer *KubeStore, owner Identity) (func(), error) {
		s := kubeCreate(t, creator, owner)
		_, release, err := claimer.Claim(s.ID, owner, "ns", "pod")
		return release, err
	}
	rel, err := claim(r[1], r[0], alice)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := claim(r[1], r[0], alice); !IsLimit(err) {
		t.Fatalf("second active session of alice on one replica: %v, want a limit", err)
	}
	if _, err := r[0].Create(Session{Owner: alice, Target: Target{Namespace: "ns", Pod: "pod"}}); !IsLimit(err) {
		t.Fatalf("create at the active limit: %v, want a limit", err)
	}
	// The other replica counts its own.
	rel2, err := claim(r[1], r[1], alice)
	if err != nil {
		t.Fatalf("alice on the other replica: %v", err)
	}
	if got := r[0].ActiveSessions() + r[1].ActiveSessions(); got != 2 {
		t.Fatalf("active %d", got)
	}
	rel()
	rel()
	rel2()
	if got := r[0].ActiveSessions() + r[1].ActiveSessions(); got != 0 {
		t.Fatalf("active %d after release (release must be idempotent)", got)
	}
}

func TestKubeStoreConcurrentClaimsAcrossReplicasSucceedOnce(t *testing.T) {
	r, _, _ := replicas(8, Limits{TTL: time.Minute})
	for round := range 20 {
		s := kubeCreate(t, r[round%len(r)], alice)
		var wins atomic.Int32
		var wg sync.WaitGroup
		for _, k := range r {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, release, err := k.Claim(s.ID, alice, "ns", "pod")
				if err == nil {
					wins.Add(1)
					release()
				} else if !errors.Is(err, ErrNotFound) {
					t.Errorf("claim: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("round %d: %d claims succeeded, want exactly 1", round, wins.Load())
		}
	}
}

func TestKubeStoreBackendErrorsAreNotRefusals(t *testing.T) {
	r, cs, _ := replicas(1, Limits{TTL: time.Minute, MaxPendingPerUser: 5})
	s := kubeCreate(t, r[0], alice)
	down := apierrors.NewServiceUnavailable("etcd is down")
	cs.PrependReactor("*", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) { return true, nil, down })

	var se *StoreError
	if _, err := r[0].Create(Session{Owner: alice}); !errors.As(err, &se) || !strings.Contains(err.Error(), "etcd is down") {
		t.Fatalf("create with the backend down: %v, want a StoreError", err)
	}
	if _, _, err := r[0].Claim(s.ID, alice, "ns", "pod"); !errors.As(err, &se) || errors.Is(err, ErrNotFound) {
		t.Fatalf("claim with the backend down: %v, want a StoreError", err)
	}
}

func TestKubeStoreUnreadableSessionIsBurnt(t *testing.T) {
	r, cs, _ := replicas(1, Limits{TTL: time.Minute})
	id := NewID()
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: SecretName(id), Namespace: storeNS, Labels: sessionSelector()},
		Data:       map[string][]byte{kubeSessionKey: []byte("{not json")},
	}
	if _, err := cs.CoreV1().Secrets(storeNS).Create(t.Context(), sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r[0].Claim(id, alice, "ns", "pod"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("claim of garbage: %v", err)
	}
	if n := len(secretsIn(t, cs)); n != 0 {
		t.Fatalf("garbage left: %d", n)
	}
}
