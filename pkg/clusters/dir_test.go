package clusters

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
)

func kubeconfig(server string) []byte {
	return []byte(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "` + server + `", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: t}
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
`)
}

func TestDirFollowsItsFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	host := func(s *Static, name string) string {
		t.Helper()
		c, err := s.Get(name)
		if err != nil {
			return "error: " + err.Error()
		}
		return c.Config.Host
	}
	s, err := NewStatic(&rest.Config{Host: "https://local"})
	if err != nil {
		t.Fatal(err)
	}
	write("east.kubeconfig", kubeconfig("https://east:6443"))
	write("README", []byte("ignored"))
	d, err := NewDir(s, dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := host(s, "east"); got != "https://east:6443" {
		t.Fatalf("east = %s", got)
	}
	if got := host(s, ""); got != "https://local" {
		t.Fatalf("local = %s", got)
	}

	// Changed, added, broken and badly named files.
	write("east.kubeconfig", kubeconfig("https://east-2:6443"))
	write("west.kubeconfig", kubeconfig("https://west:6443"))
	write("north.kubeconfig", []byte("{not yaml"))
	write("Bad_Name.kubeconfig", kubeconfig("https://bad:6443"))
	err = d.Sync()
	if err == nil || !strings.Contains(err.Error(), "north.kubeconfig") || !strings.Contains(err.Error(), "Bad_Name") {
		t.Fatalf("Sync error %v should name the broken and the misnamed file", err)
	}
	if got := host(s, "east"); got != "https://east-2:6443" {
		t.Fatalf("east after change = %s", got)
	}
	if got := host(s, "west"); got != "https://west:6443" {
		t.Fatalf("west = %s", got)
	}
	if _, err := s.Get("north"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("north: %v, want unknown", err)
	}

	// A file that breaks keeps its cluster's last good configuration.
	write("west.kubeconfig", []byte("{broken"))
	_ = d.Sync()
	if got := host(s, "west"); got != "https://west:6443" {
		t.Fatalf("west after a broken edit = %s", got)
	}

	// Removed files remove their clusters; the local cluster stays.
	for _, f := range []string{"east.kubeconfig", "west.kubeconfig", "north.kubeconfig", "Bad_Name.kubeconfig"} {
		_ = os.Remove(filepath.Join(dir, f))
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("east"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("east after removal: %v", err)
	}
	if got := host(s, ""); got != "https://local" {
		t.Fatalf("local after removals = %s", got)
	}
}
