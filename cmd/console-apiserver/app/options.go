package app

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/sets"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	apirequest "k8s.io/apiserver/pkg/endpoints/request"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericfilters "k8s.io/apiserver/pkg/server/filters"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	utilcompatibility "k8s.io/apiserver/pkg/util/compatibility"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/logs"
	logsapi "k8s.io/component-base/logs/api/v1"

	"github.com/kubecube-io/console-apiserver/pkg/apiserver"
	"github.com/kubecube-io/console-apiserver/pkg/generated/openapi"
	"github.com/kubecube-io/console-apiserver/pkg/peers"
	"github.com/kubecube-io/console-apiserver/pkg/session"
	"github.com/kubecube-io/console-apiserver/pkg/sockjs"
)

// Options are console-apiserver's flags: RecommendedOptions without etcd
// (nothing is stored), as metrics-server composes them, plus the sessions'
// and terminals' limits.
type Options struct {
	SecureServing  *genericoptions.SecureServingOptionsWithLoopback
	Authentication *genericoptions.DelegatingAuthenticationOptions
	Authorization  *genericoptions.DelegatingAuthorizationOptions
	Audit          *genericoptions.AuditOptions
	Features       *genericoptions.FeatureOptions
	Logs           *logs.Options

	// Kubeconfig reaches the cluster this server runs in; empty means the
	// in-cluster config.
	Kubeconfig string

	// MemberClustersDir holds one kubeconfig per member cluster,
	// <name>.kubeconfig (e.g. a mounted Secret); reread every
	// MemberClustersResync.
	MemberClustersDir    string
	MemberClustersResync time.Duration

	Sessions session.Limits
	Terminal sockjs.Options
	// DrainTimeout bounds the wait for terminals at shutdown.
	DrainTimeout time.Duration
	// ShutdownDelay keeps serving, not ready, before draining at shutdown.
	ShutdownDelay time.Duration

	// ScaleOut configures running as one of several replicas.
	ScaleOut ScaleOutOptions
}

// ScaleOutOptions let replicas share sessions: a session store on
// kube-apiserver, and forwarding of the SockJS fallback transports between
// replicas (see docs/scale-out.md).
type ScaleOutOptions struct {
	// SessionStore is "memory" (one replica) or "kube" (any number).
	SessionStore string
	// SessionNamespace holds the sessions' Secrets and the routing Leases.
	SessionNamespace string
	// PeerAddress is host:port where other replicas reach this one.
	PeerAddress string
	// PeerCAFile verifies the other replicas' serving certificates, for
	// PeerServerName (default console-apiserver.<namespace>.svc).
	PeerCAFile     string
	PeerServerName string
	// PeerIdentities may forward terminal requests here (default: this
	// server's own user name).
	PeerIdentities []string
	// ReplicaName names this replica in logs and Leases (default: the host
	// name, which is the pod's name).
	ReplicaName string
	// GoawayChance is the probability of asking an HTTP/2 client (the
	// aggregator) to reconnect after a request.
	GoawayChance float64
}

// Session stores.
const (
	SessionStoreMemory = "memory"
	SessionStoreKube   = "kube"
)

// defaultSessionNamespace is the pod's own namespace when in a pod.
func defaultSessionNamespace() string {
	if b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
		if ns := strings.TrimSpace(string(b)); ns != "" {
			return ns
		}
	}
	return "kubecube-console"
}

// NewOptions returns the defaults.
func NewOptions() *Options {
	o := &Options{
		SecureServing:  genericoptions.NewSecureServingOptions().WithLoopback(),
		Authentication: genericoptions.NewDelegatingAuthenticationOptions(),
		Authorization:  genericoptions.NewDelegatingAuthorizationOptions(),
		Audit:          genericoptions.NewAuditOptions(),
		Features:       genericoptions.NewFeatureOptions(),
		Logs:           logs.NewOptions(),
		Sessions:       session.DefaultLimits,
		Terminal:       sockjs.DefaultOptions(),
		DrainTimeout:   10 * time.Second,

		MemberClustersResync: 10 * time.Second,

		ScaleOut: ScaleOutOptions{SessionStore: SessionStoreMemory, SessionNamespace: defaultSessionNamespace()},
	}
	o.SecureServing.BindPort = 6443
	// Requests without credentials are authenticated as system:anonymous:
	// DelegatingAuthenticationOptions.ApplyTo ignores its Anonymous field
	// (setting it false did nothing), and the Deployment's probes need
	// /healthz, /livez and /readyz, which are always allowed, without
	// credentials. Everything else is authorized by kube-apiserver
	// (SubjectAccessReview), whose RBAC grants anonymous nothing here, and
	// the terminal refuses anonymous callers itself (401) even where RBAC
	// grants them pods/attach.
	// Priority and fairness would need informers on kube-apiserver's
	// flowcontrol API; the max-in-flight limits suit a server this small,
	// and long-running attach requests are exempt from them.
	o.Features.EnablePriorityAndFairness = false
	return o
}

// Flags returns the flags grouped for --help.
func (o *Options) Flags() cliflag.NamedFlagSets {
	var fss cliflag.NamedFlagSets
	o.SecureServing.AddFlags(fss.FlagSet("secure serving"))
	o.Authentication.AddFlags(fss.FlagSet("authentication"))
	o.Authorization.AddFlags(fss.FlagSet("authorization"))
	o.Audit.AddFlags(fss.FlagSet("auditing"))
	o.Features.AddFlags(fss.FlagSet("features"))
	logsapi.AddFlags(o.Logs, fss.FlagSet("logs"))

	fs := fss.FlagSet("console")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Kubeconfig of the cluster to open terminals in (default: in-cluster config). Its identity needs to impersonate users, groups, uids and userextras, get and watch pods, and create subjectaccessreviews.")
	fs.StringVar(&o.MemberClustersDir, "member-clusters-dir", o.MemberClustersDir, "Directory of member-cluster kubeconfigs, one <cluster>.kubeconfig per member (e.g. a mounted Secret). spec.cluster names them; changes apply without a restart. Each kubeconfig's identity needs the same rights in its cluster as --kubeconfig's.")
	fs.DurationVar(&o.MemberClustersResync, "member-clusters-resync", o.MemberClustersResync, "How often --member-clusters-dir is reread.")
	fs.DurationVar(&o.Sessions.TTL, "session-ttl", o.Sessions.TTL, "How long a created session may wait to be bound.")
	fs.IntVar(&o.Sessions.MaxPendingPerUser, "max-pending-sessions-per-user", o.Sessions.MaxPendingPerUser, "Created but not yet bound sessions one user may hold (0: no limit).")
	fs.IntVar(&o.Sessions.MaxActivePerUser, "max-active-sessions-per-user", o.Sessions.MaxActivePerUser, "Running terminals one user may hold (0: no limit).")
	fs.IntVar(&o.Sessions.MaxActive, "max-active-sessions", o.Sessions.MaxActive, "Running terminals this server holds in total (0: no limit).")
	fs.DurationVar(&o.Terminal.BindTimeout, "bind-timeout", o.Terminal.BindTimeout, "Time from opening the SockJS connection to the bind frame.")
	fs.DurationVar(&o.Terminal.IdleTimeout, "idle-timeout", o.Terminal.IdleTimeout, "A terminal with neither input nor output for this long is ended (0: never).")
	fs.DurationVar(&o.Terminal.MaxDuration, "max-session-duration", o.Terminal.MaxDuration, "A terminal is ended after this long, whatever it does (0: never).")
	fs.IntVar(&o.Terminal.MaxMessageSize, "max-message-size", o.Terminal.MaxMessageSize, "Largest client frame, in bytes.")
	fs.StringSliceVar(&o.Terminal.AllowedOrigins, "allowed-origins", o.Terminal.AllowedOrigins, "Origins a browser may open terminals from (scheme://host[:port], or * for any). Requests without an Origin header (non-browser clients) are always allowed.")
	fs.DurationVar(&o.DrainTimeout, "shutdown-drain-timeout", o.DrainTimeout, "At shutdown, how long to wait for terminals to end after telling their clients.")
	fs.DurationVar(&o.ShutdownDelay, "shutdown-delay-duration", o.ShutdownDelay, "At shutdown, how long to go on serving, terminals included, with /readyz failing, before telling clients and draining: time for load balancers to stop sending new connections. This plus --shutdown-drain-timeout must fit in the pod's termination grace period.")

	so := &o.ScaleOut
	fs = fss.FlagSet("scale-out")
	fs.StringVar(&so.SessionStore, "session-store", so.SessionStore, "Where sessions wait to be bound: memory (one replica only) or kube (Secrets in --session-namespace, so that a session created on one replica binds on any; SockJS fallback transports are then forwarded to the replica holding their session). kube needs --peer-address and --peer-ca-file.")
	fs.StringVar(&so.SessionNamespace, "session-namespace", so.SessionNamespace, "Namespace of the session Secrets and routing Leases (in a pod: the pod's namespace). The server needs get, list, create, delete on secrets and leases there, and update on leases.")
	fs.StringVar(&so.PeerAddress, "peer-address", so.PeerAddress, "host:port where the other replicas reach this one's secure port, e.g. $(POD_IP):8443.")
	fs.StringVar(&so.PeerCAFile, "peer-ca-file", so.PeerCAFile, "CA bundle that verifies the other replicas' serving certificates (the CA of --tls-cert-file).")
	fs.StringVar(&so.PeerServerName, "peer-server-name", so.PeerServerName, "Name the other replicas' serving certificates must hold (default: console-apiserver.<session-namespace>.svc, the name the APIService dials).")
	fs.StringSliceVar(&so.PeerIdentities, "peer-identities", so.PeerIdentities, "User names allowed to forward terminal requests to this replica (default: this server's own, from a SelfSubjectReview). They also need RBAC for the non-resource URL "+peers.InternalPrefix+"*.")
	fs.StringVar(&so.ReplicaName, "replica-name", so.ReplicaName, "Name of this replica in logs and Leases (default: the host name).")
	fs.Float64Var(&so.GoawayChance, "goaway-chance", so.GoawayChance, "Probability of sending an HTTP/2 GOAWAY after a request, so that the aggregator's long-lived connection is reopened and a layer-4 load balancer spreads requests over replicas (0 disables; 0.001-0.02 suits production, as for kube-apiserver's flag of that name).")
	return fss
}

// Validate reports every flag error at once.
func (o *Options) Validate() []error {
	var errs []error
	errs = append(errs, o.SecureServing.Validate()...)
	errs = append(errs, o.Authentication.Validate()...)
	errs = append(errs, o.Authorization.Validate()...)
	errs = append(errs, o.Audit.Validate()...)
	errs = append(errs, o.Features.Validate()...)
	if err := logsapi.ValidateAndApply(o.Logs, nil); err != nil {
		errs = append(errs, err)
	}
	if o.Sessions.TTL <= 0 {
		errs = append(errs, fmt.Errorf("--session-ttl must be positive"))
	}
	if o.Terminal.MaxMessageSize < 1024 {
		errs = append(errs, fmt.Errorf("--max-message-size must be at least 1024"))
	}
	if o.Terminal.BindTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--bind-timeout must be positive"))
	}
	if o.ShutdownDelay < 0 {
		errs = append(errs, fmt.Errorf("--shutdown-delay-duration must not be negative"))
	}
	errs = append(errs, o.ScaleOut.validate()...)
	return errs
}

// genericConfig builds the generic server's configuration.
func (o *Options) genericConfig() (*genericapiserver.Config, error) {
	if err := o.SecureServing.MaybeDefaultWithSelfSignedCerts("localhost", nil, []net.IP{net.ParseIP("127.0.0.1")}); err != nil {
		return nil, fmt.Errorf("creating self-signed certificates: %w", err)
	}
	cfg := genericapiserver.NewConfig(apiserver.Codecs)
	cfg.EffectiveVersion = utilcompatibility.DefaultBuildEffectiveVersion()
	cfg.ShutdownDelayDuration = o.ShutdownDelay
	// Terminals outlive any request timeout: attach is long-running here as
	// it is in kube-apiserver.
	// So are the attach requests replicas forward to each other, on a
	// non-resource path.
	longRunning := genericfilters.BasicLongRunningRequestCheck(sets.NewString("watch"), sets.NewString("attach"))
	cfg.LongRunningFunc = func(r *http.Request, ri *apirequest.RequestInfo) bool {
		return longRunning(r, ri) || (ri != nil && !ri.IsResourceRequest && peers.IsInternalPath(ri.Path))
	}
	cfg.GoawayChance = o.ScaleOut.GoawayChance

	namer := openapinamer.NewDefinitionNamer(apiserver.Scheme)
	cfg.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(openapi.GetOpenAPIDefinitions, namer)
	cfg.OpenAPIConfig.Info.Title = "console-apiserver"
	cfg.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(openapi.GetOpenAPIDefinitions, namer)
	cfg.OpenAPIV3Config.Info.Title = "console-apiserver"

	if err := o.SecureServing.ApplyTo(&cfg.SecureServing, &cfg.LoopbackClientConfig); err != nil {
		return nil, err
	}
	if err := o.Authentication.ApplyTo(&cfg.Authentication, cfg.SecureServing, cfg.OpenAPIConfig); err != nil {
		return nil, err
	}
	if err := o.Authorization.ApplyTo(&cfg.Authorization); err != nil {
		return nil, err
	}
	if err := o.Audit.ApplyTo(cfg); err != nil {
		return nil, err
	}
	if err := o.Features.ApplyTo(cfg, nil, nil); err != nil {
		return nil, err
	}
	return cfg, nil
}

// clusterConfig reaches the cluster terminals run in.
func (o *Options) clusterConfig() (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if o.Kubeconfig != "" {
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: o.Kubeconfig}, &clientcmd.ConfigOverrides{}).ClientConfig()
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("loading the cluster's client config: %w", err)
	}
	cfg.UserAgent = "console-apiserver"
	// Session creation makes two calls (an access review and a pod read);
	// client-go's default 5 QPS would queue a burst of users.
	cfg.QPS, cfg.Burst = 100, 200
	return cfg, nil
}

func (so *ScaleOutOptions) validate() []error {
	var errs []error
	switch so.SessionStore {
	case SessionStoreMemory:
	case SessionStoreKube:
		if so.SessionNamespace == "" {
			errs = append(errs, fmt.Errorf("--session-store=kube needs --session-namespace"))
		}
		if _, port, err := net.SplitHostPort(so.PeerAddress); err != nil || port == "" {
			errs = append(errs, fmt.Errorf("--session-store=kube needs --peer-address=host:port where other replicas reach this one (got %q)", so.PeerAddress))
		}
		if so.PeerCAFile == "" {
			errs = append(errs, fmt.Errorf("--session-store=kube needs --peer-ca-file to verify the other replicas"))
		}
	default:
		errs = append(errs, fmt.Errorf("--session-store must be %s or %s, not %q", SessionStoreMemory, SessionStoreKube, so.SessionStore))
	}
	if so.GoawayChance < 0 || so.GoawayChance > 1 {
		errs = append(errs, fmt.Errorf("--goaway-chance must be between 0 and 1"))
	}
	return errs
}
