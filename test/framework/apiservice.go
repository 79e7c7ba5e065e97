package framework

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

// AggregatedServer is a server on loopback to route an APIService to.
type AggregatedServer struct {
	Group, Version string
	// Namespace and Service name the ExternalName Service the APIService
	// points at; the aggregator dials the TLS name Service.Namespace.svc.
	Namespace, Service string
	Port               int
	CABundle           []byte
}

// ServingCert returns the serving certificate of a Service for aggregated
// servers on loopback: it names <service>.<namespace>.svc (what the
// aggregator verifies), localhost and 127.0.0.1. It returns the pair and the
// CA bundle for the APIService. One pair per Service per plane: every
// server (replica) behind one APIService presents it, and its files never
// change under a running server (which would reload them).
func (cp *ControlPlane) ServingCert(service, namespace string) (*KeyPair, []byte, error) {
	cp.certsMu.Lock()
	defer cp.certsMu.Unlock()
	key := service + "." + namespace
	if c, ok := cp.servingCerts[key]; ok {
		return c.pair, c.caBundle, nil
	}
	dir := filepath.Join(cp.Dir, "pki")
	ca, err := NewCA(dir, service+"-"+namespace+"-ca")
	if err != nil {
		return nil, nil, err
	}
	host := key + ".svc"
	kp, err := ca.Issue(dir, service+"-"+namespace+"-serving", CertSpec{
		CommonName: host, Server: true,
		DNSNames: []string{host, host + ".cluster.local", "localhost"},
		IPs:      []net.IP{net.ParseIP("127.0.0.1")},
	})
	if err != nil {
		return nil, nil, err
	}
	if cp.servingCerts == nil {
		cp.servingCerts = map[string]servingCert{}
	}
	cp.servingCerts[key] = servingCert{pair: kp, caBundle: ca.CertPEM}
	return kp, ca.CertPEM, nil
}

type servingCert struct {
	pair     *KeyPair
	caBundle []byte
}

// RegisterAPIService routes Group/Version to a server on loopback: an
// ExternalName Service to localhost (endpoints cannot name loopback) and an
// APIService with the server's CA. It waits until the APIService is Available.
func (cp *ControlPlane) RegisterAPIService(ctx context.Context, s AggregatedServer) error {
	if err := cp.CreateNamespace(ctx, s.Namespace); err != nil {
		return err
	}
	manifest := fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %[1]s
  namespace: %[2]s
spec:
  type: ExternalName
  externalName: localhost
  ports:
  - name: https
    port: %[3]d
    protocol: TCP
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: %[4]s.%[5]s
spec:
  group: %[5]s
  version: %[4]s
  groupPriorityMinimum: 1000
  versionPriority: 15
  caBundle: %[6]s
  service:
    name: %[1]s
    namespace: %[2]s
    port: %[3]d
`, s.Service, s.Namespace, s.Port, s.Version, s.Group, base64.StdEncoding.EncodeToString(s.CABundle))
	if err := cp.Apply(ctx, []byte(manifest)); err != nil {
		return err
	}
	return cp.WaitForAPIService(ctx, s.Version+"."+s.Group)
}

var apiServiceGVR = schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"}

// WaitForAPIService waits until the named APIService reports Available.
func (cp *ControlPlane) WaitForAPIService(ctx context.Context, name string) error {
	dyn, err := dynamic.NewForConfig(cp.AdminConfig())
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return waitFor(wctx, cp.apiserver, "APIService "+name+" Available", func(ctx context.Context) error {
		obj, err := dyn.Resource(apiServiceGVR).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		conds, _, _ := unstructuredSlice(obj.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Available" {
				if m["status"] == "True" {
					return nil
				}
				return fmt.Errorf("%v: %v", m["reason"], m["message"])
			}
		}
		return errors.New("no Available condition yet")
	})
}

func unstructuredSlice(obj map[string]any, fields ...string) ([]any, bool, error) {
	var cur any = obj
	for _, f := range fields {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false, nil
		}
		cur = m[f]
	}
	s, ok := cur.([]any)
	return s, ok, nil
}
