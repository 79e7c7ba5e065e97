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
	Name   string
	Config *rest.Config
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
	cs, err := kubernetes.NewForConfig(cfg)
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
