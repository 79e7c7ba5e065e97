package v1alpha1

import (
	"slices"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
)

// DefaultCommand is the command of a shell session that names none. It is one
// exec: trying bash and falling back to sh in two round-trips would let the
// first keystrokes go to the failed attempt.
var DefaultCommand = []string{"/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi"}

func addDefaultingFuncs(scheme *runtime.Scheme) error {
	return RegisterDefaults(scheme)
}

// SetDefaults_ShellSessionSpec fills what a client may leave out. The
// container is not defaulted here: that needs the pod, which only the server
// can read.
func SetDefaults_ShellSessionSpec(obj *ShellSessionSpec) {
	if obj.TTY == nil {
		obj.TTY = ptr.To(true)
	}
	if len(obj.Command) == 0 {
		// A copy, so that a caller editing its object cannot change the
		// default for every later session.
		obj.Command = slices.Clone(DefaultCommand)
	}
}
