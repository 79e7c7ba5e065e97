// Command rawhop serves the benchmark's raw-hop aggregated API (see package
// rawhop). make bench builds and starts it; it is not a product.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/kubecube-io/console-apiserver/test/bench/rawhop"
)

func main() {
	var (
		port                    int
		certFile, keyFile       string
		frontProxyCA, adminCA   string
		kubeconfig, allowedName string
	)
	flag.IntVar(&port, "secure-port", 0, "port to serve on (127.0.0.1)")
	flag.StringVar(&certFile, "tls-cert-file", "", "serving certificate")
	flag.StringVar(&keyFile, "tls-private-key-file", "", "serving key")
	flag.StringVar(&frontProxyCA, "requestheader-client-ca-file", "", "CA of the aggregator's front-proxy client certificate")
	flag.StringVar(&allowedName, "requestheader-allowed-name", "front-proxy-client", "front-proxy client certificate name to trust")
	flag.StringVar(&adminCA, "admin-ca-file", "", "CA of admin clients of /bench/ (stats, pprof)")
	flag.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of this server's identity")
	flag.Parse()
	if err := run(port, certFile, keyFile, frontProxyCA, adminCA, kubeconfig, allowedName); err != nil {
		fmt.Fprintln(os.Stderr, "rawhop:", err)
		os.Exit(1)
	}
}

func run(port int, certFile, keyFile, frontProxyCA, adminCA, kubeconfig, allowedName string) error {
	kube, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	fp, err := readCerts(frontProxyCA)
	if err != nil {
		return err
	}
	var admin []*x509.Certificate
	if adminCA != "" {
		if admin, err = readCerts(adminCA); err != nil {
			return err
		}
	}
	s, err := rawhop.New(rawhop.Config{Kube: kube, FrontProxyCA: fp, AdminCA: admin, AllowedNames: []string{allowedName}})
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 30 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	fmt.Printf("rawhop serving on %s\n", ln.Addr())
	if err := srv.Serve(tls.NewListener(ln, s.TLSConfig(cert))); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func readCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no certificates", path)
	}
	return out, nil
}
