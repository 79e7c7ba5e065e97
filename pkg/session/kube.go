package session

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/wait"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/klog/v2"
)

// How pending sessions look on kube-apiserver. The labels let a replica list
// one user's pending sessions (the pending limit) and all of them (the sweep)
// without reading anything else in the namespace.
const (
	KubeComponentLabel = "app.kubernetes.io/component"
	KubeComponent      = "console-session"
	KubeManagedByLabel = "app.kubernetes.io/managed-by"
	KubeManagedBy      = "console-apiserver"
	// KubeOwnerLabel holds a hash of the owner's name: label values cannot
	// hold every user name, and the name need not be in plain sight.
	KubeOwnerLabel = "consoles.kubecube.io/owner-hash"
	// KubeExpiresAnnotation is the claim deadline (RFC 3339), so that the
	// sweep need not decode the session.
	KubeExpiresAnnotation = "consoles.kubecube.io/expires"
	// KubeSecretType marks the Secrets as ours for anyone looking.
	KubeSecretType corev1.SecretType = "consoles.kubecube.io/session"
	// KubeSecretPrefix starts every session Secret's name.
	KubeSecretPrefix = "console-session-"

	kubeSessionKey = "session.json"
)

// DefaultKubeCallTimeout bounds one call to kube-apiserver. Store has no
// context (its callers are a REST create and a frame handler), so the store
// bounds its own calls.
const DefaultKubeCallTimeout = 10 * time.Second

// KubeStore keeps pending sessions as Secrets on kube-apiserver, one per
// session, so that any replica can claim a session another one created.
//
// The Secret's name is a hash of the session ID: whoever may list or read
// those Secrets learns who opens terminals where, never an ID that binds.
// Claiming is a read and a delete with preconditions on the UID and
// resourceVersion just read: of any number of replicas claiming one ID at
// once, exactly one delete succeeds, so single use holds across replicas.
//
// Active sessions are counted per replica, in memory: they live in the
// replica that runs them and end with it, and counting them centrally would
// cost writes per session for a limit that only bounds one server's load.
type KubeStore struct {
	secrets     corev1client.SecretInterface
	limits      Limits
	now         func() time.Time
	callTimeout time.Duration
	active      activeSlots
}

var _ Store = (*KubeStore)(nil)

// NewKubeStore keeps sessions as Secrets in client's namespace. now is the
// clock; nil means time.Now. The replicas' clocks must agree to well within
// the TTL: a session expires by its creator's clock, as read by its claimer.
func NewKubeStore(client corev1client.SecretInterface, limits Limits, now func() time.Time) *KubeStore {
	if now == nil {
		now = time.Now
	}
	if limits.TTL <= 0 {
		limits.TTL = DefaultLimits.TTL
	}
	return &KubeStore{
		secrets:     client,
		limits:      limits,
		now:         now,
		callTimeout: DefaultKubeCallTimeout,
		active:      activeSlots{of: map[string]int{}},
	}
}

// SecretName is the name of the Secret holding the session id.
func SecretName(id string) string {
	sum := sha256.Sum256([]byte(id))
	return KubeSecretPrefix + hex.EncodeToString(sum[:])
}

func ownerHash(user string) string {
	sum := sha256.Sum256([]byte(user))
	return hex.EncodeToString(sum[:20])
}

func sessionSelector() labels.Set {
	return labels.Set{KubeComponentLabel: KubeComponent, KubeManagedByLabel: KubeManagedBy}
}

// storedSession is the Secret's payload. The ID is not in it: the Secret's
// name is the only link to the ID, and it is one-way.
type storedSession struct {
	Owner   storedIdentity `json:"owner"`
	Target  storedTarget   `json:"target"`
	Command []string       `json:"command,omitempty"`
	TTY     bool           `json:"tty"`
	Created time.Time      `json:"created"`
	Expires time.Time      `json:"expires"`
}

type storedIdentity struct {
	Name   string              `json:"name"`
	UID    string              `json:"uid,omitempty"`
	Groups []string            `json:"groups,omitempty"`
	Extra  map[string][]string `json:"extra,omitempty"`
}

type storedTarget struct {
	Cluster   string `json:"cluster,omitempty"`
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	Container string `json:"container"`
}

func encodeSession(s Session) ([]byte, error) {
	return json.Marshal(storedSession{
		Owner:   storedIdentity(s.Owner),
		Target:  storedTarget(s.Target),
		Command: s.Command,
		TTY:     s.TTY,
		Created: s.Created,
		Expires: s.Expires,
	})
}

func decodeSession(id string, sec *corev1.Secret) (Session, error) {
	var st storedSession
	if err := json.Unmarshal(sec.Data[kubeSessionKey], &st); err != nil {
		return Session{}, fmt.Errorf("decoding session %s: %w", sec.Name, err)
	}
	if st.Owner.Name == "" || st.Expires.IsZero() {
		return Session{}, fmt.Errorf("session %s has no owner or no expiry", sec.Name)
	}
	return Session{
		ID:      id,
		Owner:   Identity(st.Owner),
		Target:  Target(st.Target),
		Command: st.Command,
		TTY:     st.TTY,
		Created: st.Created,
		Expires: st.Expires,
	}, nil
}

func (k *KubeStore) callContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), k.callTimeout)
}

// StoreError is a failure of the store's backend, not a refusal.
type StoreError struct {
	Op  string
	Err error
}

func (e *StoreError) Error() string {
	return "session store unavailable: " + e.Op + ": " + e.Err.Error()
}
func (e *StoreError) Unwrap() error { return e.Err }

func (k *KubeStore) Create(s Session) (Session, error) {
	now := k.now()
	user := s.Owner.Name
	if err := k.active.check(user, k.limits); err != nil {
		return Session{}, err
	}
	ctx, cancel := k.callContext()
	defer cancel()
	if l := k.limits.MaxPendingPerUser; l > 0 {
		// Two creates by one user on two replicas at once may both see
		// l-1 and both succeed: the limit can be passed by the number of
		// concurrent creates, never by more.
		n, err := k.pendingOf(ctx, user, now)
		if err != nil {
			return Session{}, &StoreError{Op: "counting pending sessions", Err: err}
		}
		if n >= l {
			return Session{}, &LimitError{Limit: "max-pending-sessions-per-user", Max: l, RetryAfter: k.limits.TTL}
		}
	}

	s = s.Clone()
	s.ID = NewID()
	s.Created = now
	s.Expires = now.Add(k.limits.TTL)
	data, err := encodeSession(s)
	if err != nil {
		return Session{}, err
	}
	immutable := true
	lbls := sessionSelector()
	lbls[KubeOwnerLabel] = ownerHash(user)
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:        SecretName(s.ID),
			Labels:      lbls,
			Annotations: map[string]string{KubeExpiresAnnotation: s.Expires.UTC().Format(time.RFC3339Nano)},
		},
		Type: KubeSecretType,
		// Nobody may change a session after its creation; a claim deletes it.
		Immutable: &immutable,
		Data:      map[string][]byte{kubeSessionKey: data},
	}
	if _, err := k.secrets.Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		return Session{}, &StoreError{Op: "storing the session", Err: err}
	}
	return s.Clone(), nil
}

// pendingOf counts user's sessions that have not expired. The list is a
// consistent read, so a session created on any replica a moment ago counts.
func (k *KubeStore) pendingOf(ctx context.Context, user string, now time.Time) (int, error) {
	sel := sessionSelector()
	sel[KubeOwnerLabel] = ownerHash(user)
	list, err := k.secrets.List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return 0, err
	}
	n := 0
	for i := range list.Items {
		if exp, ok := expiresOf(&list.Items[i]); !ok || now.Before(exp) {
			n++
		}
	}
	return n, nil
}

func expiresOf(sec *corev1.Secret) (time.Time, bool) {
	t, err := time.Parse(time.RFC3339Nano, sec.Annotations[KubeExpiresAnnotation])
	return t, err == nil
}

func (k *KubeStore) Claim(id string, caller Identity, namespace, pod string) (Session, func(), error) {
	if !ValidID(id) {
		return Session{}, nil, ErrInvalidID
	}
	ctx, cancel := k.callContext()
	defer cancel()
	name := SecretName(id)
	sec, err := k.secrets.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Session{}, nil, ErrNotFound
	} else if err != nil {
		return Session{}, nil, &StoreError{Op: "reading the session", Err: err}
	}
	// Single use: whatever happens next, this ID is spent, and only the
	// claimer whose delete succeeds goes on. The preconditions make the
	// delete apply to the object just read and nothing else.
	uid, rv := sec.UID, sec.ResourceVersion
	err = k.secrets.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return Session{}, nil, ErrNotFound
	} else if err != nil {
		return Session{}, nil, &StoreError{Op: "claiming the session", Err: err}
	}
	s, err := decodeSession(id, sec)
	if err != nil {
		klog.ErrorS(err, "Dropping an unreadable session")
		return Session{}, nil, ErrNotFound
	}
	if !k.now().Before(s.Expires) {
		return Session{}, nil, ErrNotFound
	}
	if !s.Owner.Equal(caller) || s.Target.Namespace != namespace || s.Target.Pod != pod {
		return Session{}, nil, ErrNotOwner
	}
	release, err := k.active.acquire(s.Owner.Name, k.limits)
	if err != nil {
		return Session{}, nil, err
	}
	return s, release, nil
}

// ActiveSessions is the number of sessions claimed on this replica and not
// yet released.
func (k *KubeStore) ActiveSessions() int {
	k.active.mu.Lock()
	defer k.active.mu.Unlock()
	return k.active.total
}

// Sweep deletes expired pending sessions and returns how many it deleted.
// Expired sessions are never claimable; the sweep only frees their storage.
func (k *KubeStore) Sweep(ctx context.Context) (int, error) {
	// From the watch cache: a session missed now is swept next time.
	list, err := k.secrets.List(ctx, metav1.ListOptions{LabelSelector: sessionSelector().String(), ResourceVersion: "0"})
	if err != nil {
		return 0, err
	}
	now := k.now()
	deleted := 0
	var errs []error
	for i := range list.Items {
		sec := &list.Items[i]
		if exp, ok := expiresOf(sec); ok && now.Before(exp) {
			continue
		}
		uid := sec.UID
		err := k.secrets.Delete(ctx, sec.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		switch {
		case err == nil:
			deleted++
		case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
			// Claimed or swept by another replica meanwhile.
		default:
			errs = append(errs, err)
		}
	}
	return deleted, errors.Join(errs...)
}

// RunSweeper sweeps every interval (the TTL when zero) until ctx ends. Every
// replica sweeps; deletes with preconditions make that harmless.
func (k *KubeStore) RunSweeper(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = k.limits.TTL
	}
	wait.JitterUntilWithContext(ctx, func(ctx context.Context) {
		sctx, cancel := context.WithTimeout(ctx, interval)
		defer cancel()
		n, err := k.Sweep(sctx)
		if err != nil {
			klog.ErrorS(err, "Sweeping expired sessions", "deleted", n)
		} else if n > 0 {
			klog.V(2).InfoS("Swept expired sessions", "deleted", n)
		}
	}, interval, 0.2, true)
}

// activeSlots counts the claimed, still running sessions of this replica.
type activeSlots struct {
	mu    sync.Mutex
	total int
	of    map[string]int
}

// activeRetry is the hint for a client at an active limit: a session that
// ends frees its slot at once.
const activeRetry = 5 * time.Second

func (a *activeSlots) check(user string, l Limits) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.checkLocked(user, l)
}

func (a *activeSlots) checkLocked(user string, l Limits) error {
	if l.MaxActive > 0 && a.total >= l.MaxActive {
		return &LimitError{Limit: "max-active-sessions", Max: l.MaxActive, RetryAfter: activeRetry}
	}
	if l.MaxActivePerUser > 0 && a.of[user] >= l.MaxActivePerUser {
		return &LimitError{Limit: "max-active-sessions-per-user", Max: l.MaxActivePerUser, RetryAfter: activeRetry}
	}
	return nil
}

func (a *activeSlots) acquire(user string, l Limits) (func(), error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.checkLocked(user, l); err != nil {
		return nil, err
	}
	a.total++
	a.of[user]++
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.total--
			if a.of[user]--; a.of[user] <= 0 {
				delete(a.of, user)
			}
		})
	}, nil
}
