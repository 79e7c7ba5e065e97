package validation

import (
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/kubecube-io/console-apiserver/pkg/apis/consoles"
)

func validSession() *consoles.ShellSession {
	return &consoles.ShellSession{
		Spec: consoles.ShellSessionSpec{
			Container: "app",
			Command:   []string{"/bin/sh", "-c", "exec sh"},
			TTY:       true,
		},
	}
}

// want is one expected error: its type and path, because those are what a
// client acts on; the message is free to change.
type want struct {
	typ  field.ErrorType
	path string
}

func TestValidateShellSession(t *testing.T) {
	tooMany := make([]string, MaxCommandArgs+1)
	for i := range tooMany {
		tooMany[i] = "x"
	}

	tests := []struct {
		name   string
		mutate func(*consoles.ShellSession)
		want   []want
	}{
		{name: "valid", mutate: func(*consoles.ShellSession) {}},
		{
			name:   "empty container is left for the server to default",
			mutate: func(s *consoles.ShellSession) { s.Spec.Container = "" },
		},
		{
			name:   "container not a DNS-1123 label",
			mutate: func(s *consoles.ShellSession) { s.Spec.Container = "App_1" },
			want:   []want{{field.ErrorTypeInvalid, "spec.container"}},
		},
		{
			name:   "container with a dot is a subdomain, not a label",
			mutate: func(s *consoles.ShellSession) { s.Spec.Container = "a.b" },
			want:   []want{{field.ErrorTypeInvalid, "spec.container"}},
		},
		{
			name:   "empty command element",
			mutate: func(s *consoles.ShellSession) { s.Spec.Command = []string{"/bin/sh", "-c", ""} },
			want:   []want{{field.ErrorTypeRequired, "spec.command[2]"}},
		},
		{
			name:   "every empty element is reported",
			mutate: func(s *consoles.ShellSession) { s.Spec.Command = []string{"", "ok", ""} },
			want: []want{
				{field.ErrorTypeRequired, "spec.command[0]"},
				{field.ErrorTypeRequired, "spec.command[2]"},
			},
		},
		{
			name:   "too many elements",
			mutate: func(s *consoles.ShellSession) { s.Spec.Command = tooMany },
			want:   []want{{field.ErrorTypeTooMany, "spec.command"}},
		},
		{
			name: "exactly the maximum number of elements",
			mutate: func(s *consoles.ShellSession) {
				s.Spec.Command = tooMany[:MaxCommandArgs]
			},
		},
		{
			name: "element too long",
			mutate: func(s *consoles.ShellSession) {
				s.Spec.Command = []string{"/bin/sh", strings.Repeat("a", MaxCommandArgBytes+1)}
			},
			want: []want{{field.ErrorTypeTooLong, "spec.command[1]"}},
		},
		{
			name: "element of exactly the maximum length",
			mutate: func(s *consoles.ShellSession) {
				s.Spec.Command = []string{"/bin/sh", strings.Repeat("a", MaxCommandArgBytes)}
			},
		},
		{
			name:   "NUL byte",
			mutate: func(s *consoles.ShellSession) { s.Spec.Command = []string{"/bin/sh", "-c", "echo\x00rm -rf /"} },
			want:   []want{{field.ErrorTypeInvalid, "spec.command[2]"}},
		},
		{
			name:   "cluster may be a subdomain",
			mutate: func(s *consoles.ShellSession) { s.Spec.Cluster = "member-1.example.com" },
		},
		{
			name:   "cluster not a DNS-1123 subdomain",
			mutate: func(s *consoles.ShellSession) { s.Spec.Cluster = "Member_1" },
			want:   []want{{field.ErrorTypeInvalid, "spec.cluster"}},
		},
		{
			name: "errors from every field are collected",
			mutate: func(s *consoles.ShellSession) {
				s.Spec.Container = "-bad"
				s.Spec.Command = []string{"sh", ""}
				s.Spec.Cluster = "-bad"
			},
			want: []want{
				{field.ErrorTypeInvalid, "spec.container"},
				{field.ErrorTypeRequired, "spec.command[1]"},
				{field.ErrorTypeInvalid, "spec.cluster"},
			},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSession()
			tt.mutate(s)
			errs := ValidateShellSession(s)

			var got []want
			for _, e := range errs {
				got = append(got, want{e.Type, e.Field})
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got errors %v, want %v\nfull: %v", got, tt.want, errs)
			}
		})
	}
}
