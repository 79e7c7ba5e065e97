// Package session is where the create path (pkg/registry) and the terminal
// (pkg/sockjs) meet: the registry mints a session for an authorized caller,
// the terminal claims it once, as the same caller, for the same pod.
//
// Neither side knows how sessions are kept. The Store interface is small on
// purpose so that an implementation shared by several replicas can replace
// the in-memory one without either side changing.
package session

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"k8s.io/apiserver/pkg/authentication/user"
)

// Identity is the authenticated caller a session belongs to. Every part of it
// is impersonated when the command runs, so every part must match at claim.
type Identity struct {
	Name   string
	UID    string
	Groups []string
	Extra  map[string][]string
}

// IdentityFrom copies what the authentication chain established.
func IdentityFrom(u user.Info) Identity {
	id := Identity{Name: u.GetName(), UID: u.GetUID(), Groups: slices.Clone(u.GetGroups())}
	if extra := u.GetExtra(); len(extra) > 0 {
		id.Extra = make(map[string][]string, len(extra))
		for k, v := range extra {
			id.Extra[k] = slices.Clone(v)
		}
	}
	return id
}

// UserInfo turns the identity back into what client-go impersonates.
func (i Identity) UserInfo() user.Info {
	return &user.DefaultInfo{Name: i.Name, UID: i.UID, Groups: i.Groups, Extra: i.Extra}
}

// Equal reports whether two identities are the same caller. Group and extra
// order is not significant: authenticators do not promise an order.
func (i Identity) Equal(o Identity) bool {
	if i.Name != o.Name || i.UID != o.UID || !sameSet(i.Groups, o.Groups) || len(i.Extra) != len(o.Extra) {
		return false
	}
	for k, v := range i.Extra {
		w, ok := o.Extra[k]
		if !ok || !sameSet(v, w) {
			return false
		}
	}
	return true
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// Target is the container a session opens a shell in.
type Target struct {
	// Cluster names a member cluster; "" is the cluster the server runs in.
	Cluster   string
	Namespace string
	Pod       string
	Container string
}

func (t Target) String() string {
	s := t.Namespace + "/" + t.Pod + "/" + t.Container
	if t.Cluster != "" {
		s = t.Cluster + ":" + s
	}
	return s
}

// Session is a grant to run one command once, as its owner, in its target.
type Session struct {
	ID      string
	Owner   Identity
	Target  Target
	Command []string
	TTY     bool
	Created time.Time
	// Expires is the deadline to claim the session; it says nothing about
	// how long a claimed session may run.
	Expires time.Time
}

// Clone returns a copy that shares no slices or maps with s.
func (s Session) Clone() Session {
	c := s
	c.Command = slices.Clone(s.Command)
	c.Owner.Groups = slices.Clone(s.Owner.Groups)
	if s.Owner.Extra != nil {
		c.Owner.Extra = maps.Clone(s.Owner.Extra)
		for k, v := range c.Owner.Extra {
			c.Owner.Extra[k] = slices.Clone(v)
		}
	}
	return c
}

// Store keeps sessions between create and claim, and counts the claimed ones
// that are still running, for limits.
type Store interface {
	// Create mints an ID for s (s.ID is ignored), sets Created and Expires,
	// and keeps it pending. It returns a *LimitError when the owner or the
	// server has too many sessions.
	Create(s Session) (Session, error)
	// Claim takes a pending session, once. The caller must be the owner and
	// name the same namespace and pod; a mismatch returns ErrNotOwner and
	// burns the session, because whoever holds a leaked ID should not get a
	// second try. The returned release func must be called when the
	// session's command ends; it is what frees the active-session slot.
	Claim(id string, caller Identity, namespace, pod string) (s Session, release func(), err error)
}

var (
	// ErrNotFound covers unknown, expired and already claimed IDs alike, so
	// that a caller learns nothing about IDs that are not theirs.
	ErrNotFound = errors.New("session not found, expired or already used")
	// ErrNotOwner is a claim by another identity, or for another pod.
	ErrNotOwner = errors.New("session belongs to another user or pod")
	// ErrInvalidID is an ID that cannot be one this server minted.
	ErrInvalidID = errors.New("session ID must be 32 lowercase hexadecimal characters")
)

// LimitError says which limit a request ran into.
type LimitError struct {
	// Limit is the flag-like name of the limit, e.g. "max-pending-per-user".
	Limit string
	Max   int
	// RetryAfter is a hint for clients (the HTTP Retry-After header).
	RetryAfter time.Duration
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("too many sessions: limit %s=%d reached", e.Limit, e.Max)
}

// IsLimit reports whether err is a *LimitError.
func IsLimit(err error) bool {
	var le *LimitError
	return errors.As(err, &le)
}

// Digest hashes the identity and then parts, each length-prefixed, with
// groups and extra in a canonical order (Equal ignores their order too).
// Keys derived from it, such as the SockJS session keys, can only ever be
// reached again by the same identity.
func (i Identity) Digest(parts ...string) [sha256.Size]byte {
	h := sha256.New()
	field := func(s string) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	field(i.Name)
	field(i.UID)
	groups := slices.Sorted(slices.Values(i.Groups))
	field(strconv.Itoa(len(groups)))
	for _, g := range groups {
		field(g)
	}
	keys := slices.Sorted(maps.Keys(i.Extra))
	field(strconv.Itoa(len(keys)))
	for _, k := range keys {
		field(k)
		vals := slices.Sorted(slices.Values(i.Extra[k]))
		field(strconv.Itoa(len(vals)))
		for _, v := range vals {
			field(v)
		}
	}
	for _, p := range parts {
		field(p)
	}
	var sum [sha256.Size]byte
	copy(sum[:], h.Sum(nil))
	return sum
}
