// Package app is console-apiserver's command: flags, configuration, run.
package app

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/term"
	"k8s.io/component-base/version"
	"k8s.io/klog/v2"

	"github.com/kubecube-io/console-apiserver/pkg/apiserver"
	"github.com/kubecube-io/console-apiserver/pkg/clusters"
	"github.com/kubecube-io/console-apiserver/pkg/peers"
	"github.com/kubecube-io/console-apiserver/pkg/podexec"
	"github.com/kubecube-io/console-apiserver/pkg/session"
	"github.com/kubecube-io/console-apiserver/pkg/sockjs"
)

// NewCommand returns the console-apiserver command.
func NewCommand() *cobra.Command {
	o := NewOptions()
	cmd := &cobra.Command{
		Use:   "console-apiserver",
		Short: "Serves RBAC-governed terminals into containers as the aggregated API consoles.kubecube.io",
		Long: `console-apiserver is a Kubernetes aggregated API server. POST the shell
subresource of a pod (/apis/consoles.kubecube.io/v1alpha1/namespaces/NS/pods/POD/shell)
for a one-time session ID, then open SockJS on the pod's attach subresource and bind it.
Commands run as the caller, impersonated, never as this server.`,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if errs := o.Validate(); len(errs) > 0 {
				return utilerrors.NewAggregate(errs)
			}
			return Run(genericapiserver.SetupSignalContext(), o)
		},
	}
	fss := o.Flags()
	for _, fs := range fss.FlagSets {
		cmd.Flags().AddFlagSet(fs)
	}
	cols, _, _ := term.TerminalSize(cmd.OutOrStdout())
	cliflag.SetUsageAndHelpFunc(cmd, fss, cols)
	return cmd
}

// Run serves until ctx ends, then drains.
func Run(ctx context.Context, o *Options) error {
	server, err := NewServer(o)
	if err != nil {
		return err
	}
	klog.InfoS("Starting console-apiserver", "version", version.Get().GitVersion, "port", o.SecureServing.BindPort)
	return server.Generic.PrepareRun().RunWithContext(ctx)
}

// NewServer builds a server from options without running it (tests run it
// in-process with their own context).
func NewServer(o *Options) (*apiserver.Server, error) {
	generic, err := o.genericConfig()
	if err != nil {
		return nil, err
	}
	local, err := o.clusterConfig()
	if err != nil {
		return nil, err
	}
	reg, err := clusters.NewStatic(local)
	if err != nil {
		return nil, err
	}
	var members *clusters.Dir
	if o.MemberClustersDir != "" {
		// A broken member file is logged and retried; it must not keep the
		// server, and the other clusters, from serving.
		if members, err = clusters.NewDir(reg, o.MemberClustersDir); err != nil {
			klog.ErrorS(err, "Loading member clusters")
		}
	}
	var (
		store     session.Store
		kubeStore *session.KubeStore
		home      kubernetes.Interface
	)
	if o.ScaleOut.SessionStore == SessionStoreKube {
		// Its own client, so that store calls do not queue behind pod
		// lookups in client-go's rate limiter, nor the reverse.
		if home, err = kubernetes.NewForConfig(local); err != nil {
			return nil, err
		}
		kubeStore = session.NewKubeStore(home.CoreV1().Secrets(o.ScaleOut.SessionNamespace), o.Sessions, nil)
		store = kubeStore
	} else {
		store = session.NewMemoryStore(o.Sessions, nil)
	}
	terminal := sockjs.NewTerminal(o.Terminal, store, podexec.New(reg))
	cfg := &apiserver.Config{
		Generic: generic,
		Extra: apiserver.ExtraConfig{
			Clusters:     reg,
			Store:        store,
			Terminal:     terminal,
			DrainTimeout: o.DrainTimeout,
		},
	}
	if kubeStore != nil {
		if cfg.Extra.Peers, err = o.newPeers(home, local, terminal); err != nil {
			return nil, err
		}
	}
	s, err := cfg.New()
	if err != nil {
		return nil, fmt.Errorf("building the server: %w", err)
	}
	if kubeStore != nil {
		s.Generic.AddPostStartHookOrDie("session-sweeper", func(ctx genericapiserver.PostStartHookContext) error {
			go kubeStore.RunSweeper(ctx, 0)
			return nil
		})
	}
	if members != nil {
		s.Generic.AddPostStartHookOrDie("member-clusters-resync", func(ctx genericapiserver.PostStartHookContext) error {
			go members.Run(ctx, o.MemberClustersResync)
			return nil
		})
	}
	return s, nil
}

// newPeers configures forwarding between replicas: this replica's identity
// towards the others is its own token in the home cluster.
func (o *Options) newPeers(home kubernetes.Interface, local *rest.Config, terminal *sockjs.Terminal) (*peers.Peers, error) {
	so := o.ScaleOut
	token, err := peers.TokenFrom(local)
	if err != nil {
		return nil, err
	}
	cas, err := peers.LoadCAs(so.PeerCAFile)
	if err != nil {
		return nil, fmt.Errorf("--peer-ca-file: %w", err)
	}
	serverName := so.PeerServerName
	if serverName == "" {
		serverName = "console-apiserver." + so.SessionNamespace + ".svc"
	}
	// A SockJS session lives at most the disconnect delay without a
	// receiving request, and the terminal lingers up to twice that to
	// deliver its last frames; past both, with margin, it is over.
	grace := 3*o.Terminal.DisconnectDelay + 5*time.Second
	return peers.New(peers.Config{
		Client:      home,
		Namespace:   so.SessionNamespace,
		ReplicaName: so.ReplicaName,
		Address:     so.PeerAddress,
		RootCAs:     cas,
		ServerName:  serverName,
		Token:       token,
		Identities:  so.PeerIdentities,
		Local:       terminal.ServeAttach,
		Grace:       grace,
	})
}
