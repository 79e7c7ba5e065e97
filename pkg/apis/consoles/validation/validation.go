// Package validation checks consoles.kubecube.io objects on the internal
// version, after defaulting, so one set of rules covers every served version.
package validation

import (
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/kubecube-io/console-apiserver/pkg/apis/consoles"
)

const (
	// MaxCommandArgs bounds the argv of a session. A shell needs a handful;
	// the bound keeps one request from pinning memory in this server and the
	// kubelet for as long as the session lives.
	MaxCommandArgs = 64
	// MaxCommandArgBytes bounds one argument, for the same reason, while
	// leaving room for an inline script passed to sh -c.
	MaxCommandArgBytes = 4096
)

// ValidateShellSession returns every problem with a shell session request,
// each at the field path a client can act on.
func ValidateShellSession(s *consoles.ShellSession) field.ErrorList {
	return validateShellSessionSpec(&s.Spec, field.NewPath("spec"))
}

func validateShellSessionSpec(spec *consoles.ShellSessionSpec, fldPath *field.Path) field.ErrorList {
	var allErrs field.ErrorList

	// The container name ends up in the kubelet's exec URL and in the audit
	// log, so it must be a name a pod can actually have.
	if spec.Container != "" {
		for _, msg := range validation.IsDNS1123Label(spec.Container) {
			allErrs = append(allErrs, field.Invalid(fldPath.Child("container"), spec.Container, msg))
		}
	}

	cmdPath := fldPath.Child("command")
	if len(spec.Command) > MaxCommandArgs {
		allErrs = append(allErrs, field.TooMany(cmdPath, len(spec.Command), MaxCommandArgs))
	}
	for i, arg := range spec.Command {
		idxPath := cmdPath.Index(i)
		switch {
		case arg == "":
			// An empty argv[0] cannot be executed, and an empty later
			// argument is almost always a client that built its list wrong.
			allErrs = append(allErrs, field.Required(idxPath, "must not be empty"))
		case len(arg) > MaxCommandArgBytes:
			allErrs = append(allErrs, field.TooLong(idxPath, "", MaxCommandArgBytes))
		case strings.IndexByte(arg, 0) >= 0:
			// execve takes C strings: the runtime would silently cut the
			// argument at the NUL and run something other than what the
			// audit log recorded.
			allErrs = append(allErrs, field.Invalid(idxPath, arg, "must not contain NUL bytes"))
		}
	}

	// Cluster names are resolved to member clusters by name, and those names
	// are Kubernetes object names.
	if spec.Cluster != "" {
		for _, msg := range validation.IsDNS1123Subdomain(spec.Cluster) {
			allErrs = append(allErrs, field.Invalid(fldPath.Child("cluster"), spec.Cluster, msg))
		}
	}

	return allErrs
}
