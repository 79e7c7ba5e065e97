package peers

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// TokenFrom returns the bearer token of cfg (this replica's identity in its
// home cluster) for presenting to other replicas. A token file, as in a pod,
// is reread now and then: the kubelet rotates it.
func TokenFrom(cfg *rest.Config) (func() (string, error), error) {
	if cfg.BearerTokenFile != "" {
		return fileToken(cfg.BearerTokenFile, time.Minute), nil
	}
	if cfg.BearerToken != "" {
		tok := cfg.BearerToken
		return func() (string, error) { return tok, nil }, nil
	}
	return nil, errors.New("the server's client config has no bearer token; replicas authenticate to each other with it (run as a ServiceAccount, or use a kubeconfig with a token)")
}

func fileToken(path string, ttl time.Duration) func() (string, error) {
	var (
		mu      sync.Mutex
		tok     string
		expires time.Time
	)
	return func() (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if tok != "" && time.Now().Before(expires) {
			return tok, nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			if tok != "" {
				// Keep the last one: it may still be valid.
				return tok, nil
			}
			return "", err
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", fmt.Errorf("token file %s is empty", path)
		}
		tok, expires = t, time.Now().Add(ttl)
		return tok, nil
	}
}

// LoadCAs reads a PEM bundle of CA certificates.
func LoadCAs(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}
