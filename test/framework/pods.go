package framework

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CreateNamespace makes a namespace usable without a controller-manager: its
// default ServiceAccount is created by hand (admission wants it).
func (cp *ControlPlane) CreateNamespace(ctx context.Context, name string) error {
	cs := cp.AdminClient()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: name}}
	if _, err := cs.CoreV1().ServiceAccounts(name).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating default service account in %s: %w", name, err)
	}
	return nil
}

// PodSpec describes a pod for CreatePod.
type PodSpec struct {
	Namespace, Name string
	// Containers are the container names; default one named "app".
	Containers  []string
	Annotations map[string]string
}

// CreatePod creates a pod bound to the kwok node (no scheduler runs) and
// waits until kwok reports it Running and Ready.
func (cp *ControlPlane) CreatePod(ctx context.Context, spec PodSpec) (*corev1.Pod, error) {
	if err := cp.CreateNamespace(ctx, spec.Namespace); err != nil {
		return nil, err
	}
	if len(spec.Containers) == 0 {
		spec.Containers = []string{"app"}
	}
	no := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: spec.Name, Namespace: spec.Namespace, Annotations: spec.Annotations},
		Spec: corev1.PodSpec{
			NodeName:                     cp.NodeName,
			AutomountServiceAccountToken: &no,
		},
	}
	for _, c := range spec.Containers {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: c, Image: "busybox"})
	}
	cs := cp.AdminClient()
	if _, err := cs.CoreV1().Pods(spec.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("creating pod %s/%s: %w", spec.Namespace, spec.Name, err)
	}
	return cp.WaitForPodRunning(ctx, spec.Namespace, spec.Name)
}

// WaitForPodRunning waits until the pod is Running and Ready.
func (cp *ControlPlane) WaitForPodRunning(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var pod *corev1.Pod
	err := waitFor(wctx, cp.kwok, "pod "+namespace+"/"+name+" Running", func(ctx context.Context) error {
		var err error
		pod, err = cp.AdminClient().CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("phase %s", pod.Status.Phase)
		}
		for _, c := range pod.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return errors.New("not Ready")
	})
	return pod, err
}
