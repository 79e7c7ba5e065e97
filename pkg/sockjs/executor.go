package sockjs

import (
	"context"
	"errors"
	"io"

	"k8s.io/client-go/tools/remotecommand"

	"github.com/kubecube-io/console-apiserver/pkg/session"
)

// Executor runs a session's command in its container, as its owner.
// pkg/podexec implements it with client-go over SPDY; tests use fakes.
type Executor interface {
	// Exec blocks until the command ends, ctx is cancelled, or the stream
	// fails. A command that ran and exited non-zero returns an error that
	// implements k8s.io/client-go/util/exec.ExitError.
	Exec(ctx context.Context, s session.Session, streams Streams) error
}

// ErrPodGone is what an Executor's error matches (errors.Is) when the
// command ended because its pod went away: deleted, or replaced by another
// pod of the same name. Its text says so, and the terminal shows it as the
// reason the session ended rather than as an exec failure.
var ErrPodGone = errors.New("the pod is gone")

// Streams are the command's standard streams as the relay sees them.
type Streams struct {
	Stdin  io.Reader
	Stdout io.Writer
	// Stderr is nil with a TTY: the terminal merges it into Stdout.
	Stderr io.Writer
	// Resize delivers terminal sizes; nil without a TTY.
	Resize remotecommand.TerminalSizeQueue
}
