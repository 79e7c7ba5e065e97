package pod

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/klog/v2"

	"github.com/kubecube-io/console-apiserver/pkg/apis/consoles"
	"github.com/kubecube-io/console-apiserver/pkg/apis/consoles/validation"
	"github.com/kubecube-io/console-apiserver/pkg/clusters"
	"github.com/kubecube-io/console-apiserver/pkg/session"
)

// DefaultContainerAnnotation names the container kubectl exec picks by default.
const DefaultContainerAnnotation = "kubectl.kubernetes.io/default-container"

var (
	podsResource  = schema.GroupResource{Resource: "pods"}
	execResource  = schema.GroupResource{Resource: "pods/exec"}
	shellResource = schema.GroupResource{Group: consoles.GroupName, Resource: "pods/shell"}
)

// ShellREST is pods/shell: create mints a one-time session for the caller.
type ShellREST struct {
	clusters clusters.Registry
	store    session.Store
}

var (
	_ rest.NamedCreater             = (*ShellREST)(nil)
	_ rest.Scoper                   = (*ShellREST)(nil)
	_ rest.GroupVersionKindProvider = (*ShellREST)(nil)
)

// NewShellREST returns the pods/shell storage.
func NewShellREST(reg clusters.Registry, store session.Store) *ShellREST {
	return &ShellREST{clusters: reg, store: store}
}

// New implements rest.Storage.
func (r *ShellREST) New() runtime.Object { return &consoles.ShellSession{} }

// Destroy implements rest.Storage.
func (r *ShellREST) Destroy() {}

// NamespaceScoped implements rest.Scoper.
func (r *ShellREST) NamespaceScoped() bool { return true }

// GroupVersionKind implements rest.GroupVersionKindProvider: the
// subresource takes and returns ShellSession, not its parent's kind.
func (r *ShellREST) GroupVersionKind(containingGV schema.GroupVersion) schema.GroupVersionKind {
	return containingGV.WithKind("ShellSession")
}

// Create implements rest.NamedCreater. It fails early and clearly: whatever
// would make the terminal fail later is checked here, as the caller.
func (r *ShellREST) Create(ctx context.Context, name string, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	in, ok := obj.(*consoles.ShellSession)
	if !ok {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("expected a ShellSession, got %T", obj))
	}
	namespace := request.NamespaceValue(ctx)
	caller, ok := request.UserFrom(ctx)
	if !ok {
		return nil, apierrors.NewUnauthorized("no authenticated user")
	}
	if errs := validation.ValidateShellSession(in); len(errs) > 0 {
		return nil, apierrors.NewInvalid(consoles.Kind("ShellSession"), name, errs)
	}
	if createValidation != nil {
		if err := createValidation(ctx, in); err != nil {
			return nil, err
		}
	}
	owner := session.IdentityFrom(caller)

	cluster, err := r.clusters.Get(in.Spec.Cluster)
	if errors.Is(err, clusters.ErrUnknown) {
		return nil, apierrors.NewInvalid(consoles.Kind("ShellSession"), name, field.ErrorList{
			field.NotFound(field.NewPath("spec", "cluster"), in.Spec.Cluster),
		})
	} else if err != nil {
		return nil, apierrors.NewInternalError(err)
	}

	// Authorize before looking the pod up: someone who may not exec there
	// learns nothing about the pod.
	if err := canExec(ctx, cluster, owner, namespace, name); err != nil {
		return nil, err
	}
	pod, err := cluster.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, apierrors.NewNotFound(podsResource, name)
	} else if err != nil {
		return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("%s: looking up pod %s/%s: %v", clusterName(in.Spec.Cluster), namespace, name, err))
	}
	container, err := pickContainer(pod, in.Spec.Container)
	if err != nil {
		return nil, err
	}

	if options != nil && len(options.DryRun) > 0 {
		out := in.DeepCopy()
		out.Spec.Container = container
		return out, nil
	}
	s, err := r.store.Create(session.Session{
		Owner:   owner,
		Target:  session.Target{Cluster: in.Spec.Cluster, Namespace: namespace, Pod: name, Container: container},
		Command: in.Spec.Command,
		TTY:     in.Spec.TTY,
	})
	var limit *session.LimitError
	if errors.As(err, &limit) {
		return nil, apierrors.NewTooManyRequests(limit.Error(), int(math.Ceil(limit.RetryAfter.Seconds())))
	} else if err != nil {
		return nil, apierrors.NewInternalError(err)
	}
	klog.InfoS("Shell session created", "user", owner.Name, "cluster", in.Spec.Cluster, "namespace", namespace,
		"pod", name, "container", container, "command", in.Spec.Command, "tty", in.Spec.TTY, "expires", s.Expires)
	sessionsCreated.Inc()

	out := in.DeepCopy()
	out.ObjectMeta = metav1.ObjectMeta{Name: name, Namespace: namespace, CreationTimestamp: metav1.NewTime(s.Created)}
	out.Spec.Container = container
	out.Status = consoles.ShellSessionStatus{ID: s.ID, ExpirationTimestamp: metav1.NewTime(s.Expires.Truncate(time.Second))}
	return out, nil
}

// canExec asks the target cluster whether owner may create pods/exec on the
// pod: the terminal will run that exec as owner, so this is the right that
// decides, whatever pods/shell grants.
func canExec(ctx context.Context, c *clusters.Cluster, owner session.Identity, namespace, pod string) error {
	extra := map[string]authorizationv1.ExtraValue{}
	for k, v := range owner.Extra {
		extra[k] = v
	}
	review := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: owner.Name, UID: owner.UID, Groups: owner.Groups, Extra: extra,
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Namespace: namespace, Verb: "create", Resource: "pods", Subresource: "exec", Name: pod,
		},
	}}
	res, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
	if err != nil {
		return apierrors.NewServiceUnavailable(fmt.Sprintf("%s: checking whether %q may exec into %s/%s: %v", clusterName(c.Name), owner.Name, namespace, pod, err))
	}
	if !res.Status.Allowed {
		why := fmt.Sprintf("User %q cannot create resource \"pods/exec\" in API group \"\" in the namespace %q", owner.Name, namespace)
		if res.Status.Reason != "" {
			why += ": " + res.Status.Reason
		}
		return apierrors.NewForbidden(execResource, pod, errors.New(why))
	}
	return nil
}

// pickContainer applies kubectl exec's defaulting and checks the container
// can take an exec now.
func pickContainer(pod *corev1.Pod, want string) (string, error) {
	if pod.DeletionTimestamp != nil {
		return "", apierrors.NewConflict(podsResource, pod.Name, errors.New("pod is being deleted"))
	}
	if pod.Status.Phase != corev1.PodRunning {
		return "", apierrors.NewConflict(podsResource, pod.Name, fmt.Errorf("pod is %s, not Running", pod.Status.Phase))
	}
	names := make([]string, 0, len(pod.Spec.Containers))
	for _, c := range pod.Spec.Containers {
		names = append(names, c.Name)
	}
	for _, c := range pod.Spec.EphemeralContainers {
		names = append(names, c.Name)
	}
	if want == "" {
		want = pod.Annotations[DefaultContainerAnnotation]
		if !slices.Contains(names, want) && len(pod.Spec.Containers) > 0 {
			want = pod.Spec.Containers[0].Name
		}
	}
	if !slices.Contains(names, want) {
		return "", &apierrors.StatusError{ErrStatus: metav1.Status{
			Status: metav1.StatusFailure, Code: http.StatusNotFound, Reason: metav1.StatusReasonNotFound,
			Details: &metav1.StatusDetails{Name: want, Kind: "container"},
			Message: fmt.Sprintf("container %q not found in pod %s/%s (containers: %v)", want, pod.Namespace, pod.Name, names),
		}}
	}
	for _, st := range append(slices.Clone(pod.Status.ContainerStatuses), pod.Status.EphemeralContainerStatuses...) {
		if st.Name == want && st.State.Running == nil {
			return "", apierrors.NewConflict(podsResource, pod.Name, fmt.Errorf("container %q is not running", want))
		}
	}
	return want, nil
}

// clusterName names a cluster in messages.
func clusterName(name string) string {
	if name == "" {
		return "local cluster"
	}
	return fmt.Sprintf("cluster %q", name)
}
