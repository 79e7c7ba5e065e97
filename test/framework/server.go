package framework

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/kubecube-io/console-apiserver/cmd/console-apiserver/app"
	"github.com/kubecube-io/console-apiserver/pkg/apiserver"
)

// RunningServer is a console-apiserver running in this process.
type RunningServer struct {
	*apiserver.Server
	Prep    *ConsoleServer
	cancel  context.CancelFunc
	stopped chan struct{}
	err     error
}

// Stop shuts the server down (draining terminals) and waits for it.
func (s *RunningServer) Stop() {
	s.cancel()
	select {
	case <-s.stopped:
	case <-time.After(60 * time.Second):
	}
}

// RunConsoleServer runs console-apiserver in this process with the flags a
// deployment would pass (PrepareConsoleServer's, then extraArgs), and
// registers its APIService. In-process, a test can count its goroutines.
func (cp *ControlPlane) RunConsoleServer(ctx context.Context, name string, extraArgs ...string) (*RunningServer, error) {
	prep, err := cp.PrepareConsoleServer(ctx, name, extraArgs...)
	if err != nil {
		return nil, err
	}
	return cp.RunPreparedConsoleServer(ctx, prep)
}

// RunPreparedConsoleServer runs a prepared server in this process and points
// the APIService at it (several servers of one plane can take turns).
func (cp *ControlPlane) RunPreparedConsoleServer(ctx context.Context, prep *ConsoleServer) (*RunningServer, error) {
	o := app.NewOptions()
	fs := pflag.NewFlagSet("console-apiserver", pflag.ContinueOnError)
	for _, f := range o.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(prep.Args); err != nil {
		return nil, err
	}
	if errs := o.Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("%v", errs)
	}
	s, err := app.NewServer(o)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	rs := &RunningServer{Server: s, Prep: prep, cancel: cancel, stopped: make(chan struct{})}
	go func() {
		rs.err = s.Generic.PrepareRun().RunWithContext(sctx)
		close(rs.stopped)
	}()
	if err := cp.RegisterConsoleAPIService(ctx, prep); err != nil {
		rs.Stop()
		return nil, err
	}
	return rs, nil
}

// Done is closed when the server has stopped; Err then says why.
func (s *RunningServer) Done() <-chan struct{} { return s.stopped }

// Err is what the server's run returned, once Done is closed.
func (s *RunningServer) Err() error { <-s.stopped; return s.err }
