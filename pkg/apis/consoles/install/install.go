// Package install puts the whole consoles.kubecube.io group into a scheme, so
// that the server and its tests cannot register one version and forget
// another.
package install

import (
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"

	"github.com/kubecube-io/console-apiserver/pkg/apis/consoles"
	"github.com/kubecube-io/console-apiserver/pkg/apis/consoles/v1alpha1"
)

// Install registers the internal and every served version of the group, with
// their defaults and conversions. It panics on error: a scheme that cannot be
// built is a programming error found at start-up.
func Install(scheme *runtime.Scheme) {
	utilruntime.Must(consoles.AddToScheme(scheme))
	utilruntime.Must(v1alpha1.AddToScheme(scheme))
	utilruntime.Must(scheme.SetVersionPriority(v1alpha1.SchemeGroupVersion))
}
