// Package apiserver assembles console-apiserver: the consoles.kubecube.io
// API group on a generic API server, with the registry (which mints
// sessions) and the terminal (which claims them) meeting at one session
// store.
package apiserver

import (
	"context"
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
	page := web.Handler()
	storage := map[string]rest.Storage{
		"pods":       pod.REST{},
		"pods/shell": pod.NewShellREST(c.Extra.Clusters, c.Extra.Store),
		"pods/attach": pod.NewConnectREST(func(w http.ResponseWriter, r *http.Request, namespace, name, subpath string) {
			terminal.ServeAttach(w, r, namespace, name, subpath)
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

	// Runs after readiness has turned false and before the HTTP server stops:
	// each client hears why its terminal ends, then the streams drain.
	drain := c.Extra.DrainTimeout
	generic.AddPreShutdownHookOrDie("drain-terminals", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		klog.InfoS("Draining terminal sessions", "active", terminal.ActiveSessions(), "timeout", drain)
		return terminal.Shutdown(ctx)
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
