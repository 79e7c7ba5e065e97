package install

import (
	"net/url"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/kube-openapi/pkg/validation/spec"

	"github.com/kubecube-io/console-apiserver/pkg/apis/consoles"
	"github.com/kubecube-io/console-apiserver/pkg/apis/consoles/v1alpha1"
	"github.com/kubecube-io/console-apiserver/pkg/generated/openapi"
)

func newScheme() *runtime.Scheme {
	scheme := runtime.NewScheme()
	Install(scheme)
	return scheme
}

// The connect handler decodes the query of pods/attach and pods/console this
// way; the SockJS client adds keys of its own (a session ID with no value, a
// cache-busting t=), which must be ignored rather than rejected.
func TestDecodeConnectOptionsIgnoresUnknownKeys(t *testing.T) {
	codec := runtime.NewParameterCodec(newScheme())
	query := url.Values{
		"path":                             {"/info"},
		"3a9ae585ceaa6e3b0c72c31b0c215187": {""},
		"t":                                {"1"},
	}
	opts := &consoles.PodConnectOptions{}
	if err := codec.DecodeParameters(query, v1alpha1.SchemeGroupVersion, opts); err != nil {
		t.Fatalf("DecodeParameters: %v", err)
	}
	if opts.Path != "/info" {
		t.Errorf("Path = %q, want %q", opts.Path, "/info")
	}
}

func TestDecodeConnectOptionsWithoutPath(t *testing.T) {
	codec := runtime.NewParameterCodec(newScheme())
	opts := &consoles.PodConnectOptions{Path: "stale"}
	if err := codec.DecodeParameters(url.Values{"t": {"1"}}, v1alpha1.SchemeGroupVersion, opts); err != nil {
		t.Fatalf("DecodeParameters: %v", err)
	}
	if opts.Path != "" {
		t.Errorf("Path = %q, want empty", opts.Path)
	}
}

// A client that leaves tty out must get a terminal: defaults run before the
// conversion to the internal bool, where "unset" and "false" look the same.
func TestShellSessionDefaultsSurviveConversion(t *testing.T) {
	scheme := newScheme()
	in := &v1alpha1.ShellSession{}
	scheme.Default(in)

	out := &consoles.ShellSession{}
	if err := scheme.Convert(in, out, nil); err != nil {
		t.Fatalf("Convert: %v", err)
	}
	if !out.Spec.TTY {
		t.Error("TTY = false, want true")
	}
	if len(out.Spec.Command) != len(v1alpha1.DefaultCommand) {
		t.Errorf("Command = %q, want %q", out.Spec.Command, v1alpha1.DefaultCommand)
	}
}

func TestVersionPriority(t *testing.T) {
	got := newScheme().PrioritizedVersionsForGroup(consoles.GroupName)
	if len(got) != 1 || got[0] != v1alpha1.SchemeGroupVersion {
		t.Errorf("versions = %v, want [%v]", got, v1alpha1.SchemeGroupVersion)
	}
}

// The server names OpenAPI definitions through the scheme and looks them up in
// the generated map; a kind whose two names disagree is served without a
// schema or without its x-kubernetes-group-version-kind.
func TestOpenAPIDefinitionsCoverServedKinds(t *testing.T) {
	scheme := newScheme()
	defs := openapi.GetOpenAPIDefinitions(func(string) spec.Ref { return spec.Ref{} })
	for gvk := range scheme.AllKnownTypes() {
		if gvk.GroupVersion() != v1alpha1.SchemeGroupVersion {
			continue
		}
		name, err := scheme.ToOpenAPIDefinitionName(gvk)
		if err != nil {
			t.Errorf("%v: %v", gvk, err)
			continue
		}
		if _, ok := defs[name]; !ok {
			t.Errorf("%v: no OpenAPI definition named %q", gvk, name)
		}
	}
}
