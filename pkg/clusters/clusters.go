// Package clusters says how to reach each cluster a session may target: the
// cluster this server runs in (named "") and, later, member clusters.
package clusters

import (
	"errors"
	"fmt"
	"sync"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// ErrUnknown is returned for a cluster name that is not configured.
var ErrUnknown = errors.New("unknown cluster")

// Cluster is one reachable cluster, with the server's own credentials.
// Those credentials are used for reads and access reviews only; commands
// always run with an impersonating copy of Config.
type Cluster struct {
	Name string
	// Config streams (exec): it has no overall timeout.
	Config *rest.Config
	// Client makes short calls, each bounded by MemberTimeout, so that an
	// unreachable cluster answers with an error rather than a hang.
	Client kubernetes.Interface
}

// Registry resolves cluster names.
type Registry interface {
	Get(name string) (*Cluster, error)
}

// Static is a Registry with a fixed set of clusters.
type Static struct {
	mu       sync.RWMutex
	clusters map[string]*Cluster
}

// NewStatic returns a registry holding local as the cluster named "".
func NewStatic(local *rest.Config) (*Static, error) {
	s := &Static{clusters: map[string]*Cluster{}}
	return s, s.Set("", local)
}

// Set adds or replaces a cluster.
func (s *Static) Set(name string, cfg *rest.Config) error {
	short := rest.CopyConfig(cfg)
	short.Timeout = MemberTimeout
	cs, err := kubernetes.NewForConfig(short)
	if err != nil {
		return fmt.Errorf("client for cluster %q: %w", name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clusters[name] = &Cluster{Name: name, Config: rest.CopyConfig(cfg), Client: cs}
	return nil
}

// Get implements Registry.
func (s *Static) Get(name string) (*Cluster, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.clusters[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknown, name)
	}
	return c, nil
}

// Remove forgets a cluster; the local cluster "" cannot be removed.
func (s *Static) Remove(name string) {
	if name == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.clusters, name)
}

// Names lists the configured clusters.
func (s *Static) Names() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.clusters))
	for n := range s.clusters {
		out = append(out, n)
	}
	return out
}
