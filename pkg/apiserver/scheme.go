package apiserver

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"

	"github.com/kubecube-io/console-apiserver/pkg/apis/consoles/install"
)

var (
	// Scheme knows this group's types and the meta types every API serves.
	Scheme = runtime.NewScheme()
	// Codecs serializes Scheme's types.
	Codecs = serializer.NewCodecFactory(Scheme)
	// ParameterCodec decodes query parameters with Scheme's conversions; the
	// connect subresources need it for PodConnectOptions (metav1's knows
	// only meta types).
	ParameterCodec = runtime.NewParameterCodec(Scheme)
)

func init() {
	install.Install(Scheme)
	metav1.AddToGroupVersion(Scheme, schema.GroupVersion{Version: "v1"})
	unversioned := schema.GroupVersion{Group: "", Version: "v1"}
	Scheme.AddUnversionedTypes(unversioned,
		&metav1.Status{}, &metav1.APIVersions{}, &metav1.APIGroupList{}, &metav1.APIGroup{}, &metav1.APIResourceList{})
}
