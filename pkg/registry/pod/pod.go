// Package pod holds the REST storage of this group's pods resource and its
// subresources: shell (create a session), attach (the SockJS transport of a
// session) and console (the terminal page).
package pod

import (
	"context"
	"net/http"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"

	"github.com/kubecube-io/console-apiserver/pkg/apis/consoles"
)

// REST is the parent pods resource. It serves nothing itself: subresources
// need a parent, and under a namespaced parent they are namespaced RBAC and
// audited with their namespace and pod.
type REST struct{}

var (
	_ rest.Storage              = REST{}
	_ rest.Scoper               = REST{}
	_ rest.SingularNameProvider = REST{}
)

// New implements rest.Storage.
func (REST) New() runtime.Object { return &consoles.Pod{} }

// Destroy implements rest.Storage.
func (REST) Destroy() {}

// NamespaceScoped implements rest.Scoper.
func (REST) NamespaceScoped() bool { return true }

// GetSingularName implements rest.SingularNameProvider.
func (REST) GetSingularName() string { return "pod" }

// ConnectHandler serves one request to a connect subresource of a pod.
// subpath is what follows the subresource's name in the URL ("" or "/...").
// The request's context carries the authenticated user.
type ConnectHandler func(w http.ResponseWriter, r *http.Request, namespace, pod, subpath string)

// ConnectREST is a connect subresource (attach, console) handing requests to
// a handler outside the registry, which stays unaware of what serves them.
type ConnectREST struct {
	handler ConnectHandler
	methods []string
}

var (
	_ rest.Connecter = (*ConnectREST)(nil)
	_ rest.Scoper    = (*ConnectREST)(nil)
)

// NewConnectREST serves methods with h.
func NewConnectREST(h ConnectHandler, methods ...string) *ConnectREST {
	return &ConnectREST{handler: h, methods: methods}
}

// New implements rest.Storage.
func (r *ConnectREST) New() runtime.Object { return &consoles.PodConnectOptions{} }

// Destroy implements rest.Storage.
func (r *ConnectREST) Destroy() {}

// NamespaceScoped implements rest.Scoper.
func (r *ConnectREST) NamespaceScoped() bool { return true }

// ConnectMethods implements rest.Connecter.
func (r *ConnectREST) ConnectMethods() []string { return r.methods }

// NewConnectOptions implements rest.Connecter: the rest of the URL after the
// subresource goes to PodConnectOptions.Path.
func (r *ConnectREST) NewConnectOptions() (runtime.Object, bool, string) {
	return &consoles.PodConnectOptions{}, true, "path"
}

// Connect implements rest.Connecter.
func (r *ConnectREST) Connect(ctx context.Context, name string, opts runtime.Object, _ rest.Responder) (http.Handler, error) {
	namespace := request.NamespaceValue(ctx)
	subpath := opts.(*consoles.PodConnectOptions).Path
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.handler(w, req, namespace, name, subpath)
	}), nil
}
