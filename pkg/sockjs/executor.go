package sockjs

import (
	"context"
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

// Streams are the command's standard streams as the relay sees them.
type Streams struct {
	Stdin  io.Reader
	Stdout io.Writer
	// Stderr is nil with a TTY: the terminal merges it into Stdout.
	Stderr io.Writer
	// Resize delivers terminal sizes; nil without a TTY.
	Resize remotecommand.TerminalSizeQueue
}
