package clusters

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

// MemberTimeout bounds each non-streaming call to a member cluster, so a
// member that is down answers with an error instead of a hang.
const MemberTimeout = 10 * time.Second

// kubeconfigSuffix marks the files of a member-clusters directory: one
// kubeconfig per member, named <cluster>.kubeconfig (the keys of a Secret
// mounted as a volume).
const kubeconfigSuffix = ".kubeconfig"

// Dir keeps Static's member clusters in step with a directory of
// kubeconfigs: a file added, changed or removed is picked up at the next
// resync, without a restart.
type Dir struct {
	static *Static
	path   string
	seen   map[string][32]byte // cluster -> hash of its file
}

// NewDir loads the directory's members into s; Run keeps them current.
func NewDir(s *Static, path string) (*Dir, error) {
	d := &Dir{static: s, path: path, seen: map[string][32]byte{}}
	return d, d.Sync()
}

// Run resyncs every interval until ctx ends.
func (d *Dir) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := d.Sync(); err != nil {
				klog.ErrorS(err, "Reloading member clusters", "dir", d.path)
			}
		}
	}
}

// Sync applies the directory's current content. A file that fails to load
// keeps its cluster's previous configuration and is reported; the others
// still apply.
func (d *Dir) Sync() error {
	entries, err := os.ReadDir(d.path)
	if err != nil {
		return fmt.Errorf("reading member clusters from %s: %w", d.path, err)
	}
	present := map[string]bool{}
	var errs []string
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), kubeconfigSuffix)
		// Secret volumes hold ..data links and dot-dirs; skip anything else.
		if !ok || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if msgs := validation.IsDNS1123Subdomain(name); len(msgs) > 0 {
			errs = append(errs, fmt.Sprintf("%s: cluster name %q: %s", e.Name(), name, strings.Join(msgs, "; ")))
			continue
		}
		present[name] = true
		file := filepath.Join(d.path, e.Name())
		data, err := os.ReadFile(file)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		sum := sha256.Sum256(data)
		if old, ok := d.seen[name]; ok && old == sum {
			continue
		}
		cfg, err := memberConfig(data)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", file, err))
			continue
		}
		if err := d.static.Set(name, cfg); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		d.seen[name] = sum
		klog.InfoS("Member cluster configured", "cluster", name, "server", cfg.Host)
	}
	for name := range d.seen {
		if !present[name] {
			d.static.Remove(name)
			delete(d.seen, name)
			klog.InfoS("Member cluster removed", "cluster", name)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("member clusters: %s", strings.Join(errs, "; "))
	}
	return nil
}

func memberConfig(kubeconfig []byte) (*rest.Config, error) {
	cfg, err := clientcmd.RESTConfigFromKubeConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "console-apiserver"
	cfg.QPS, cfg.Burst = 100, 200
	return cfg, nil
}
