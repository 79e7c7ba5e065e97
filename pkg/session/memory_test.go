package session

import (
	"errors"
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

var (
	alice = Identity{Name: "alice", UID: "u-1", Groups: []string{"devs", "system:authenticated"}, Extra: map[string][]string{"scopes": {"a", "b"}}}
	bob   = Identity{Name: "bob", Groups: []string{"system:authenticated"}}
)

func newStore(l Limits) (*MemoryStore, *fakeClock) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	return NewMemoryStore(l, clock.Now), clock
}

func create(t *testing.T, m *MemoryStore, owner Identity) Session {
	t.Helper()
	s, err := m.Create(Session{Owner: owner, Target: Target{Namespace: "ns", Pod: "pod", Container: "app"}, Command: []string{"sh"}, TTY: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCreateMintsRandomHexIDsWithTTL(t *testing.T) {
	m, clock := newStore(Limits{TTL: 30 * time.Second})
	seen := map[string]bool{}
	for range 5 {
		s := create(t, m, alice)
		if !ValidID(s.ID) || seen[s.ID] {
			t.Fatalf("bad or repeated ID %q", s.ID)
		}
		seen[s.ID] = true
		if !s.Expires.Equal(clock.Now().Add(30 * time.Second)) {
			t.Fatalf("expires %v", s.Expires)
		}
	}
}

func TestClaimIsSingleUseAndBoundToOwnerAndPod(t *testing.T) {
	m, _ := newStore(Limits{TTL: time.Minute})

	s := create(t, m, alice)
	// Group order is not significant.
	reordered := alice
	reordered.Groups = []string{"system:authenticated", "devs"}
	got, release, err := m.Claim(s.ID, reordered, "ns", "pod")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if got.Target.Container != "app" || got.Owner.Name != "alice" {
		t.Fatalf("claimed %+v", got)
	}
	if _, _, err := m.Claim(s.ID, alice, "ns", "pod"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second claim: %v, want ErrNotFound", err)
	}

	for name, try := range map[string]func(id string) error{
		"other user":  func(id string) error { _, _, err := m.Claim(id, bob, "ns", "pod"); return err },
		"other uid":   func(id string) error { o := alice; o.UID = "u-2"; _, _, err := m.Claim(id, o, "ns", "pod"); return err },
		"fewer extra": func(id string) error { o := alice; o.Extra = nil; _, _, err := m.Claim(id, o, "ns", "pod"); return err },
		"other pod":   func(id string) error { _, _, err := m.Claim(id, alice, "ns", "other"); return err },
		"other ns":    func(id string) error { _, _, err := m.Claim(id, alice, "other", "pod"); return err },
	} {
		s := create(t, m, alice)
		if err := try(s.ID); !errors.Is(err, ErrNotOwner) {
			t.Errorf("%s: %v, want ErrNotOwner", name, err)
		}
		// The mismatch burned it: even the owner cannot claim it now.
		if _, _, err := m.Claim(s.ID, alice, "ns", "pod"); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: owner's claim after a mismatch: %v, want ErrNotFound", name, err)
		}
	}
}

func TestClaimRejectsMalformedAndExpiredIDs(t *testing.T) {
	m, clock := newStore(Limits{TTL: 30 * time.Second})
	for _, id := range []string{"", "abc", "3A9AE585CEAA6E3B0C72C31B0C215187", "3a9ae585ceaa6e3b0c72c31b0c21518g", "3a9ae585ceaa6e3b0c72c31b0c2151870"} {
		if _, _, err := m.Claim(id, alice, "ns", "pod"); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Claim(%q) = %v, want ErrInvalidID", id, err)
		}
	}
	s := create(t, m, alice)
	clock.Add(30 * time.Second)
	if _, _, err := m.Claim(s.ID, alice, "ns", "pod"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired claim: %v", err)
	}
	if p, _ := m.Counts(); p != 0 {
		t.Fatalf("%d pending after expiry", p)
	}
}

func TestLimits(t *testing.T) {
	m, clock := newStore(Limits{TTL: 30 * time.Second, MaxPendingPerUser: 2, MaxActivePerUser: 2, MaxActive: 3})
	limitOf := func(err error) string {
		var le *LimitError
		if errors.As(err, &le) {
			return le.Limit
		}
		return ""
	}
	a1, a2 := create(t, m, alice), create(t, m, alice)
	if _, err := m.Create(Session{Owner: alice}); limitOf(err) != "max-pending-sessions-per-user" {
		t.Fatalf("third pending: %v", err)
	}
	// Bob is not affected by alice's pending sessions.
	b1 := create(t, m, bob)
	// Expired sessions stop counting at once.
	clock.Add(31 * time.Second)
	a1, a2 = create(t, m, alice), create(t, m, alice)

	_, r1, err := m.Claim(a1.ID, alice, "ns", "pod")
	if err != nil {
		t.Fatal(err)
	}
	_, r2, err := m.Claim(a2.ID, alice, "ns", "pod")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(Session{Owner: alice}); limitOf(err) != "max-active-sessions-per-user" {
		t.Fatalf("create over active-per-user: %v", err)
	}
	b1 = create(t, m, bob)
	_, r3, err := m.Claim(b1.ID, bob, "ns", "pod")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(Session{Owner: bob}); limitOf(err) != "max-active-sessions" {
		t.Fatalf("create over total: %v", err)
	}
	r1()
	r1() // release is idempotent
	if _, active := m.Counts(); active != 2 {
		t.Fatalf("active = %d after one release", active)
	}
	create(t, m, alice)
	r2()
	r3()
	if _, active := m.Counts(); active != 0 {
		t.Fatalf("active = %d after all released", active)
	}
}

func TestConcurrentClaimsOfOneIDSucceedOnce(t *testing.T) {
	m, _ := newStore(Limits{TTL: time.Minute})
	s := create(t, m, alice)
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, release, err := m.Claim(s.ID, alice, "ns", "pod"); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
				release()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d claims won, want 1", wins)
	}
}

// FuzzClaim feeds arbitrary IDs and identities to Claim: it must never panic,
// and only the exact minted ID with the exact owner may succeed.
func FuzzClaim(f *testing.F) {
	f.Add("3a9ae585ceaa6e3b0c72c31b0c215187", "alice", "ns", "pod")
	f.Add("", "", "", "")
	f.Add("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "bob", "ns", "pod")
	f.Add("\xff\xfe", "alice\x00", "ns/..", "pod")
	f.Fuzz(func(t *testing.T, id, user, ns, pod string) {
		m, _ := newStore(Limits{TTL: time.Minute})
		s := create(t, m, alice)
		_, release, err := m.Claim(id, Identity{Name: user, UID: alice.UID, Groups: alice.Groups, Extra: alice.Extra}, ns, pod)
		if err == nil {
			release()
			if id != s.ID || user != "alice" || ns != "ns" || pod != "pod" {
				t.Fatalf("claim of %q by %q for %s/%s succeeded", id, user, ns, pod)
			}
		}
	})
}
