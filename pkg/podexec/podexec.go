// Package podexec runs a session's command in its container through the
// target cluster's kube-apiserver, impersonating the session's owner, with
// client-go's remotecommand over SPDY.
package podexec

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"

	"github.com/kubecube-io/console-apiserver/pkg/clusters"
	"github.com/kubecube-io/console-apiserver/pkg/session"
	"github.com/kubecube-io/console-apiserver/pkg/sockjs"
)

// Executor implements sockjs.Executor.
type Executor struct {
	clusters clusters.Registry
}

var _ sockjs.Executor = (*Executor)(nil)

// New returns an Executor for the clusters of reg.
func New(reg clusters.Registry) *Executor { return &Executor{clusters: reg} }

// Exec implements sockjs.Executor.
func (e *Executor) Exec(ctx context.Context, s session.Session, streams sockjs.Streams) error {
	c, err := e.clusters.Get(s.Target.Cluster)
	if err != nil {
		return err
	}
	cfg := ImpersonatingConfig(c.Config, s.Owner)
	cfg.GroupVersion = &corev1.SchemeGroupVersion
	cfg.APIPath = "/api"
	cfg.NegotiatedSerializer = scheme.Codecs.WithoutConversion()
	client, err := rest.RESTClientFor(cfg)
	if err != nil {
		return fmt.Errorf("exec client: %w", err)
	}
	req := client.Post().Resource("pods").Namespace(s.Target.Namespace).Name(s.Target.Pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: s.Target.Container,
			Command:   s.Command,
			// A TTY exec without stdin crashes some kubelets (kwok), and a
			// terminal always has a keyboard.
			Stdin:  true,
			Stdout: true,
			Stderr: !s.TTY,
			TTY:    s.TTY,
		}, scheme.ParameterCodec)
	// Our lean SPDY client (see spdyExecutor), or client-go's.
	exec, err := newExecutor(cfg, req.URL())
	if err != nil {
		return fmt.Errorf("exec to %s: %w", s.Target, err)
	}
	opts := remotecommand.StreamOptions{Stdin: streams.Stdin, Stdout: streams.Stdout, Tty: s.TTY}
	if s.TTY {
		opts.TerminalSizeQueue = streams.Resize
	} else {
		opts.Stderr = streams.Stderr
	}

	// A pod deleted under a running exec does not always end it: a node
	// that is gone, or a kubelet that leaves the process running (kwok
	// does), keeps the stream open. Watch the pod and end the exec when it
	// goes, saying why.
	ctx, cancel := context.WithCancelCause(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		if err := watchClusterPod(ctx, c, s.Target.Namespace, s.Target.Pod); err != nil {
			cancel(err)
		}
	}()
	err = exec.StreamWithContext(ctx, opts)
	if cause := context.Cause(ctx); errors.Is(cause, sockjs.ErrPodGone) {
		err = cause
	} else if err == nil && exec.lost() {
		err = errStreamLost
	}
	cancel(nil)
	<-watched
	return exitError(err)
}

// ImpersonatingConfig is cfg acting as owner: every part of the identity the
// authentication chain established is passed on, so kube-apiserver
// authorizes and audits the caller, never this server.
func ImpersonatingConfig(cfg *rest.Config, owner session.Identity) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{
		UserName: owner.Name,
		UID:      owner.UID,
		Groups:   owner.Groups,
		Extra:    owner.Extra,
	}
	return c
}

// kubeletExitStatus matches the error text of kubelets that report a
// non-zero exit as an internal error rather than as NonZeroExitCode
// (kwok does: "cmd wait: ... exit status 3").
var kubeletExitStatus = regexp.MustCompile(`exit status (\d+)$`)

// exitError turns an exit status in an error's text into a
// utilexec.ExitError, so the terminal reports it as an exit code.
func exitError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(utilexec.ExitError); ok {
		return err
	}
	if m := kubeletExitStatus.FindStringSubmatch(err.Error()); m != nil {
		if code, convErr := strconv.Atoi(m[1]); convErr == nil {
			return utilexec.CodeExitError{Err: err, Code: code}
		}
	}
	return err
}
