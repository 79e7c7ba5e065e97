package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is the API group of the console subresources.
const GroupName = "consoles.kubecube.io"

// SchemeGroupVersion is the version clients speak.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1alpha1"}

// Resource qualifies a resource with this group, as API errors and RBAC
// checks expect.
func Resource(resource string) schema.GroupResource {
	return SchemeGroupVersion.WithResource(resource).GroupResource()
}

var (
	// SchemeBuilder is a var the generated conversions register into from
	// their init, which is why it is not built with NewSchemeBuilder here.
	SchemeBuilder      runtime.SchemeBuilder
	localSchemeBuilder = &SchemeBuilder
	// AddToScheme adds this version's types, defaults and conversions to a
	// scheme.
	AddToScheme = localSchemeBuilder.AddToScheme
)

func init() {
	// Registered here rather than in the generated files so that AddToScheme
	// brings defaults along; without them an unset tty would reach the
	// server as false.
	localSchemeBuilder.Register(addKnownTypes, addDefaultingFuncs)
}

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(SchemeGroupVersion,
		&Pod{},
		&ShellSession{},
		&PodConnectOptions{},
	)
	// CreateOptions, Status and the other meta types must be known in this
	// version for the generic handlers to decode query parameters and encode
	// errors.
	metav1.AddToGroupVersion(scheme, SchemeGroupVersion)
	return nil
}
