// Package apiserver assembles console-apiserver: the consoles.kubecube.io
// API group on a generic API server, with the registry (which mints
// sessions) and the terminal (which claims them) meeting at one session
// store.
package apiserver

import (
	"context"
	"errors"
	"fmt"
	"html"
	"net/http"
	"time"

	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/klog/v2"

	"github.com/kubecube-io/console-apiserver/pkg/apis/consoles"
	"github.com/kubecube-io/console-apiserver/pkg/apis/consoles/v1alpha1"
	"github.com/kubecube-io/console-apiserver/pkg/clusters"
	"github.com/kubecube-io/console-apiserver/pkg/peers"
	"github.com/kubecube-io/console-apiserver/pkg/registry/pod"
	"github.com/kubecube-io/console-apiserver/pkg/session"
	"github.com/kubecube-io/console-apiserver/pkg/sockjs"
	"github.com/kubecube-io/console-apiserver/web"
)

// ExtraConfig is what console-apiserver adds to a generic server.
type ExtraConfig struct {
	Clusters clusters.Registry
	Store    session.Store
	Terminal *sockjs.Terminal
	// DrainTimeout bounds how long shutdown waits for terminals to end
	// after telling their clients.
	DrainTimeout time.Duration
	// Peers, when set, routes the SockJS fallback transports between
	// replicas; nil serves every request here (one replica).
	Peers *peers.Peers
}

// Config is the whole server's configuration.
type Config struct {
	Generic *genericapiserver.Config
	Extra   ExtraConfig
}

// Server is a console-apiserver ready to run.
type Server struct {
	Generic *genericapiserver.GenericAPIServer
}

// New installs the API group and the shutdown hook on a generic server.
func (c *Config) New() (*Server, error) {
	generic, err := c.Generic.Complete(nil).New("console-apiserver", genericapiserver.NewEmptyDelegate())
	if err != nil {
		return nil, err
	}
	pod.RegisterMetrics()

	terminal := c.Extra.Terminal
	attach := terminal.ServeAttach
	if p := c.Extra.Peers; p != nil {
		attach = p.ServeAttach
		// Beside the API group: a plain handler below /apis/<group>/ would
		// never be reached (go-restful owns it).
		generic.Handler.NonGoRestfulMux.HandlePrefix(peers.InternalPrefix, p.InternalHandler())
		generic.AddPostStartHookOrDie("replica-peers", func(ctx genericapiserver.PostStartHookContext) error {
			go p.Run(ctx)
			return nil
		})
	}
	page := web.Handler()
	storage := map[string]rest.Storage{
		"pods":       pod.REST{},
		"pods/shell": pod.NewShellREST(c.Extra.Clusters, c.Extra.Store),
		"pods/attach": pod.NewConnectREST(func(w http.ResponseWriter, r *http.Request, namespace, name, subpath string) {
			attach(w, r, namespace, name, subpath)
		}, http.MethodGet, http.MethodPost),
		"pods/console": pod.NewConnectREST(func(w http.ResponseWriter, r *http.Request, _, _, subpath string) {
			servePage(page, w, r, subpath)
		}, http.MethodGet),
	}
	group := genericapiserver.NewDefaultAPIGroupInfo(consoles.GroupName, Scheme, ParameterCodec, Codecs)
	group.VersionedResourcesStorageMap[v1alpha1.SchemeGroupVersion.Version] = storage
	if err := generic.InstallAPIGroup(&group); err != nil {
		return nil, err
	}

	// Runs as shutdown begins, when /readyz starts failing; the HTTP server
	// stops only after it returns. Terminals go on through the shutdown
	// delay, while load balancers stop sending this replica new clients
	// (so /readyz has failed for that long before any client is told); then
	// each client hears why its terminal ends, and the streams drain.
	drain, delay := c.Extra.DrainTimeout, c.Generic.ShutdownDelayDuration
	generic.AddPreShutdownHookOrDie("drain-terminals", func() error {
		time.Sleep(delay)
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		klog.InfoS("Draining terminal sessions", "active", terminal.ActiveSessions(), "timeout", drain)
		err := terminal.Shutdown(ctx)
		if p := c.Extra.Peers; p != nil {
			// Its sessions have ended: withdraw their routes and this
			// replica's Lease, so that nobody forwards here any more.
			pctx, pcancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer pcancel()
			err = errors.Join(err, p.Shutdown(pctx))
		}
		return err
	})
	return &Server{Generic: generic}, nil
}

// servePage serves the terminal page below .../pods/POD/console/. Without
// the trailing slash the page's relative asset URLs would miss, and an HTTP
// redirect is no way out: kube-apiserver refuses redirects from aggregated
// servers on connect requests. So answer with a page that moves the browser
// on, relatively, which works behind any proxy prefix.
func servePage(page http.Handler, w http.ResponseWriter, r *http.Request, subpath string) {
	if subpath == "" {
		target := "console/"
		if r.URL.RawQuery != "" {
			target += "?" + r.URL.RawQuery
		}
		target = html.EscapeString(target)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Content-Security-Policy", "default-src 'none'")
		fmt.Fprintf(w, "<!doctype html><meta http-equiv=\"refresh\" content=\"0; url=%s\"><a href=\"%s\">Open the console</a>\n", target, target)
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path = subpath
	r2.URL.RawPath = ""
	page.ServeHTTP(w, r2)
}
