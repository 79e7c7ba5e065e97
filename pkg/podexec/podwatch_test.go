package podexec

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kubecube-io/console-apiserver/pkg/sockjs"
)

func testPod(uid string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", UID: types.UID(uid)}}
}

// startWatch runs watchPod and returns its result channel once the watch
// (or, with forbidWatch, the first poll) is in place.
func startWatch(t *testing.T, ctx context.Context, cs *fake.Clientset) <-chan error {
	t.Helper()
	watching := make(chan struct{}, 1)
	cs.PrependWatchReactor("pods", func(k8stesting.Action) (bool, watch.Interface, error) {
		select {
		case watching <- struct{}{}:
		default:
		}
		return false, nil, nil
	})
	done := make(chan error, 1)
	go func() { done <- watchPod(ctx, cs.CoreV1(), cs.CoreV1(), "ns", "web") }()
	select {
	case <-watching:
	case err := <-done:
		t.Fatalf("watchPod returned early: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("watchPod did not watch")
	}
	return done
}

func result(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("watchPod did not return")
		return nil
	}
}

func TestWatchPodNoticesDeletion(t *testing.T) {
	ctx := t.Context()
	cs := fake.NewClientset(testPod("a"))
	done := startWatch(t, ctx, cs)
	if err := cs.CoreV1().Pods("ns").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err := result(t, done)
	if !errors.Is(err, sockjs.ErrPodGone) || err.Error() != "pod ns/web was deleted; the terminal has ended" {
		t.Fatalf("got %v", err)
	}
}

func TestWatchPodNoticesReplacement(t *testing.T) {
	ctx := t.Context()
	cs := fake.NewClientset(testPod("a"))
	done := startWatch(t, ctx, cs)
	if _, err := cs.CoreV1().Pods("ns").Update(ctx, testPod("b"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := result(t, done); !errors.Is(err, sockjs.ErrPodGone) || !strings.Contains(err.Error(), "replaced") {
		t.Fatalf("got %v", err)
	}
}

func TestWatchPodIgnoresUpdatesAndEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cs := fake.NewClientset(testPod("a"))
	done := startWatch(t, ctx, cs)
	p := testPod("a")
	p.Labels = map[string]string{"x": "y"}
	if _, err := cs.CoreV1().Pods("ns").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("an update ended the watch: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	if err := result(t, done); err != nil {
		t.Fatalf("got %v after cancel", err)
	}
}

func TestWatchPodAlreadyGone(t *testing.T) {
	cs := fake.NewClientset()
	if err := watchPod(t.Context(), cs.CoreV1(), cs.CoreV1(), "ns", "web"); !errors.Is(err, sockjs.ErrPodGone) {
		t.Fatalf("got %v", err)
	}
}

// Without the right to watch pods (RBAC of an older release), the pod is
// polled instead.
func TestWatchPodPollsWhenForbiddenToWatch(t *testing.T) {
	defer func(d time.Duration) { podPollInterval = d }(podPollInterval)
	podPollInterval = 20 * time.Millisecond
	ctx := t.Context()
	cs := fake.NewClientset(testPod("a"))
	cs.PrependWatchReactor("pods", func(k8stesting.Action) (bool, watch.Interface, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New("no watch"))
	})
	done := make(chan error, 1)
	go func() { done <- watchPod(ctx, cs.CoreV1(), cs.CoreV1(), "ns", "web") }()
	time.Sleep(50 * time.Millisecond)
	if err := cs.CoreV1().Pods("ns").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := result(t, done); !errors.Is(err, sockjs.ErrPodGone) {
		t.Fatalf("got %v", err)
	}
}
