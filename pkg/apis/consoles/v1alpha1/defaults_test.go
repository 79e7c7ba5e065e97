package v1alpha1

import (
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
)

// newScheme builds the scheme the way the server does, so that these tests
// also catch defaults that are written but never registered.
func newScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	return scheme
}

func TestShellSessionDefaults(t *testing.T) {
	tests := []struct {
		name        string
		spec        ShellSessionSpec
		wantCommand []string
		wantTTY     bool
	}{
		{
			name:        "empty spec gets the default command and a TTY",
			spec:        ShellSessionSpec{},
			wantCommand: DefaultCommand,
			wantTTY:     true,
		},
		{
			name:        "an empty, non-nil command is defaulted too",
			spec:        ShellSessionSpec{Command: []string{}},
			wantCommand: DefaultCommand,
			wantTTY:     true,
		},
		{
			name:        "an explicit tty=false is kept",
			spec:        ShellSessionSpec{TTY: ptr.To(false)},
			wantCommand: DefaultCommand,
			wantTTY:     false,
		},
		{
			name:        "an explicit command is kept",
			spec:        ShellSessionSpec{Command: []string{"top"}, TTY: ptr.To(true)},
			wantCommand: []string{"top"},
			wantTTY:     true,
		},
	}
	scheme := newScheme(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			obj := &ShellSession{Spec: tt.spec}
			scheme.Default(obj)

			if !slices.Equal(obj.Spec.Command, tt.wantCommand) {
				t.Errorf("command = %q, want %q", obj.Spec.Command, tt.wantCommand)
			}
			if obj.Spec.TTY == nil || *obj.Spec.TTY != tt.wantTTY {
				t.Errorf("tty = %v, want %v", obj.Spec.TTY, tt.wantTTY)
			}
			if obj.Spec.Container != "" {
				t.Errorf("container = %q, want it left for the server to default", obj.Spec.Container)
			}
		})
	}
}

func TestDefaultCommandIsNotShared(t *testing.T) {
	want := slices.Clone(DefaultCommand)
	obj := &ShellSession{}
	newScheme(t).Default(obj)

	obj.Spec.Command[0] = "/bin/false"
	if !slices.Equal(DefaultCommand, want) {
		t.Fatalf("editing a defaulted object changed DefaultCommand to %q", DefaultCommand)
	}
}
