package session

import (
	"crypto/rand"
	"encoding/hex"
	"sync"
	"time"
)

// Limits bounds what one user, and the server as a whole, may hold.
// A zero or negative number means no limit.
type Limits struct {
	// TTL is how long a created session may wait for its claim.
	TTL               time.Duration
	MaxPendingPerUser int
	MaxActivePerUser  int
	MaxActive         int
}

// DefaultLimits are the flags' defaults.
var DefaultLimits = Limits{TTL: 30 * time.Second, MaxPendingPerUser: 10, MaxActivePerUser: 20, MaxActive: 2000}

// MemoryStore keeps sessions in this process. It serves one replica only.
type MemoryStore struct {
	limits Limits
	now    func() time.Time

	mu        sync.Mutex
	pending   map[string]Session
	pendingOf map[string]int // user name -> pending sessions
	activeOf  map[string]int // user name -> claimed, still running sessions
	active    int
	nextSweep time.Time
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns a store enforcing limits. now is the clock; nil
// means time.Now.
func NewMemoryStore(limits Limits, now func() time.Time) *MemoryStore {
	if now == nil {
		now = time.Now
	}
	if limits.TTL <= 0 {
		limits.TTL = DefaultLimits.TTL
	}
	return &MemoryStore{
		limits:    limits,
		now:       now,
		pending:   map[string]Session{},
		pendingOf: map[string]int{},
		activeOf:  map[string]int{},
	}
}

// NewID returns 128 bits from the system's CSPRNG as 32 hex characters, the
// form the seed's front-ends expect.
func NewID() string {
	var b [16]byte
	// crypto/rand.Read never fails on supported platforms (it panics instead).
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ValidID reports whether id has the form NewID produces.
func ValidID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func (m *MemoryStore) Create(s Session) (Session, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.sweepLocked(now)

	user := s.Owner.Name
	if err := m.checkActiveLocked(user); err != nil {
		return Session{}, err
	}
	if l := m.limits.MaxPendingPerUser; l > 0 && m.pendingOf[user] >= l {
		// Expired entries may still be counted until the next sweep; a user
		// at the limit deserves an exact count.
		m.nextSweep = time.Time{}
		m.sweepLocked(now)
	}
	if l := m.limits.MaxPendingPerUser; l > 0 && m.pendingOf[user] >= l {
		return Session{}, &LimitError{Limit: "max-pending-sessions-per-user", Max: l, RetryAfter: m.limits.TTL}
	}

	s = s.Clone()
	s.ID = NewID()
	s.Created = now
	s.Expires = now.Add(m.limits.TTL)
	m.pending[s.ID] = s
	m.pendingOf[user]++
	return s.Clone(), nil
}

func (m *MemoryStore) checkActiveLocked(user string) error {
	// A session that ends frees its slot at once, so a retry soon may work.
	const retry = 5 * time.Second
	if l := m.limits.MaxActive; l > 0 && m.active >= l {
		return &LimitError{Limit: "max-active-sessions", Max: l, RetryAfter: retry}
	}
	if l := m.limits.MaxActivePerUser; l > 0 && m.activeOf[user] >= l {
		return &LimitError{Limit: "max-active-sessions-per-user", Max: l, RetryAfter: retry}
	}
	return nil
}

func (m *MemoryStore) Claim(id string, caller Identity, namespace, pod string) (Session, func(), error) {
	if !ValidID(id) {
		return Session{}, nil, ErrInvalidID
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.sweepLocked(now)

	s, ok := m.pending[id]
	if !ok || !now.Before(s.Expires) {
		return Session{}, nil, ErrNotFound
	}
	// Single use: whatever happens next, this ID is spent.
	m.dropPendingLocked(s)
	if !s.Owner.Equal(caller) || s.Target.Namespace != namespace || s.Target.Pod != pod {
		return Session{}, nil, ErrNotOwner
	}
	if err := m.checkActiveLocked(s.Owner.Name); err != nil {
		return Session{}, nil, err
	}
	m.active++
	m.activeOf[s.Owner.Name]++

	var once sync.Once
	release := func() {
		once.Do(func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			m.active--
			if m.activeOf[s.Owner.Name]--; m.activeOf[s.Owner.Name] <= 0 {
				delete(m.activeOf, s.Owner.Name)
			}
		})
	}
	return s.Clone(), release, nil
}

// Counts reports pending and active sessions, for metrics and tests.
func (m *MemoryStore) Counts() (pending, active int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweepLocked(m.now())
	return len(m.pending), m.active
}

func (m *MemoryStore) dropPendingLocked(s Session) {
	delete(m.pending, s.ID)
	if m.pendingOf[s.Owner.Name]--; m.pendingOf[s.Owner.Name] <= 0 {
		delete(m.pendingOf, s.Owner.Name)
	}
}

// sweepLocked forgets expired sessions. It walks the whole map, so it runs at
// most twice per TTL; between sweeps expired entries are only ignored.
func (m *MemoryStore) sweepLocked(now time.Time) {
	if now.Before(m.nextSweep) {
		return
	}
	m.nextSweep = now.Add(m.limits.TTL / 2)
	for _, s := range m.pending {
		if !now.Before(s.Expires) {
			m.dropPendingLocked(s)
		}
	}
}
