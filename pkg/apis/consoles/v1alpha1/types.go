package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Pod is the parent of this group's console subresources (pods/shell,
// pods/attach, pods/console). It is never stored, listed or served itself; it
// exists because a subresource needs a parent resource, and so that RBAC and
// the audit log name the namespace and pod of each terminal.
//
// Every standard verb is skipped by name instead of with the noVerbs tag:
// with noVerbs, client-gen also drops the method extensions, and
// CreateShell is the one client method this type exists for.
//
// +genclient
// +genclient:skipVerbs=get,list,watch,create,update,updateStatus,patch,apply,applyStatus,delete,deleteCollection
// +genclient:method=CreateShell,verb=create,subresource=shell,input=ShellSession,result=ShellSession
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
type Pod struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`
}

// ShellSession asks for a one-time terminal session in a container (create on
// pods/shell); its status carries the session ID the terminal then binds.
//
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
type ShellSession struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Spec ShellSessionSpec `json:"spec,omitempty"`
	// +optional
	Status ShellSessionStatus `json:"status,omitempty"`
}

// ShellSessionSpec says where and how the terminal runs.
type ShellSessionSpec struct {
	// Container to open the shell in. Defaults to the pod's
	// kubectl.kubernetes.io/default-container annotation, else its first
	// container.
	// +optional
	Container string `json:"container,omitempty"`
	// Command to run. Defaults to a POSIX sh that execs bash when present,
	// else sh (one exec, so no keystroke is lost to a failed first try).
	// +optional
	// +listType=atomic
	Command []string `json:"command,omitempty"`
	// TTY allocates a terminal. Defaults to true.
	// +optional
	TTY *bool `json:"tty,omitempty"`
	// Cluster names a member cluster; empty means the cluster this server
	// runs in.
	// +optional
	Cluster string `json:"cluster,omitempty"`
}

// ShellSessionStatus is what the server hands back for the terminal to bind.
type ShellSessionStatus struct {
	// ID is the one-time session ID: 128 random bits as 32 hexadecimal
	// characters. Bind it before ExpirationTimestamp.
	// +optional
	ID string `json:"id,omitempty"`
	// ExpirationTimestamp is when an unbound session is forgotten.
	// +optional
	ExpirationTimestamp metav1.Time `json:"expirationTimestamp,omitempty"`
}

// PodConnectOptions is the query of the connect subresources pods/attach and
// pods/console: the sub-path below the subresource.
//
// The connect handler decodes the request's query into this type through the
// scheme, hence the generated conversion from url.Values.
//
// +k8s:conversion-gen:explicit-from=net/url.Values
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
type PodConnectOptions struct {
	metav1.TypeMeta `json:",inline"`

	// Path is the sub-path below the subresource, with a leading slash, which
	// the SockJS transport uses to tell its endpoints (info, websocket,
	// xhr...) apart.
	// +optional
	Path string `json:"path,omitempty"`
}
