package podexec

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/klog/v2"

	"github.com/kubecube-io/console-apiserver/pkg/clusters"
	"github.com/kubecube-io/console-apiserver/pkg/sockjs"
)

// Timings of watchPod; variables for tests.
var (
	// podRetryInterval spaces lookups that failed (kube-apiserver
	// unreachable: then the exec stream fails by itself anyway).
	podRetryInterval = 2 * time.Second
	// podPollInterval spaces lookups when the server may not watch pods
	// (RBAC without "watch"): slower to notice, but it still notices.
	podPollInterval = 10 * time.Second
	// podWatchTimeout bounds one watch request, so that a connection that
	// died silently is replaced.
	podWatchTimeout = 5 * time.Minute
)

// podGoneError says which pod went and how.
type podGoneError struct {
	namespace, name, how string
}

func (e *podGoneError) Error() string {
	return fmt.Sprintf("pod %s/%s %s; the terminal has ended", e.namespace, e.name, e.how)
}

func (e *podGoneError) Is(target error) bool { return target == sockjs.ErrPodGone }

// watchClusterPod is watchPod with the cluster's clients. It reads the pod
// with the server's own identity (get and watch pods): the session's owner
// need not be allowed to read pods at all.
func watchClusterPod(ctx context.Context, c *clusters.Cluster, namespace, name string) error {
	// The cluster's Client cuts every call short, a watch too; a watch
	// needs a client without an overall timeout.
	watcher, err := corev1client.NewForConfig(c.Config)
	if err != nil {
		return nil
	}
	return watchPod(ctx, c.Client.CoreV1(), watcher, namespace, name)
}

// watchPod returns a *podGoneError once the pod is deleted or replaced by
// another of the same name, and nil when ctx ends first. getter makes
// short calls; watcher's requests may last.
func watchPod(ctx context.Context, getter, watcher corev1client.PodsGetter, namespace, name string) error {
	var uid types.UID
	selector := fields.OneTermEqualSelector(metav1.ObjectNameField, name).String()
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	for ctx.Err() == nil {
		pod, err := getter.Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return &podGoneError{namespace, name, "was deleted"}
		case err != nil:
			if !wait(podRetryInterval) {
				return nil
			}
			continue
		case uid != "" && pod.UID != uid:
			return &podGoneError{namespace, name, "was deleted and replaced"}
		}
		uid = pod.UID

		timeout := int64((podWatchTimeout + rand.N(podWatchTimeout/5)) / time.Second)
		w, err := watcher.Pods(namespace).Watch(ctx, metav1.ListOptions{
			FieldSelector:   selector,
			ResourceVersion: pod.ResourceVersion,
			TimeoutSeconds:  &timeout,
		})
		if err != nil {
			if apierrors.IsForbidden(err) {
				klog.V(2).InfoS("Cannot watch pods; polling instead", "namespace", namespace, "pod", name, "err", err)
				if !wait(podPollInterval) {
					return nil
				}
			} else if !wait(podRetryInterval) {
				return nil
			}
			continue
		}
		if gone := podEvents(ctx, w, uid); gone != "" {
			return &podGoneError{namespace, name, gone}
		}
	}
	return nil
}

// podEvents follows a watch of one pod until it ends, and says how the pod
// went if it did.
func podEvents(ctx context.Context, w watch.Interface, uid types.UID) string {
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ""
		case ev, ok := <-w.ResultChan():
			if !ok {
				return ""
			}
			pod, isPod := ev.Object.(*corev1.Pod)
			switch {
			case !isPod:
				// An error event (e.g. the resource version is too
				// old): look the pod up again.
				return ""
			case ev.Type == watch.Deleted && pod.UID == uid:
				return "was deleted"
			case pod.UID != uid:
				return "was deleted and replaced"
			}
		}
	}
}
