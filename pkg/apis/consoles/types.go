package consoles

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Pod is the parent of this group's console subresources (pods/shell,
// pods/attach, pods/console). It is never stored, listed or served itself; it
// exists because a subresource needs a parent resource, and so that RBAC and
// the audit log name the namespace and pod of each terminal.
//
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
type Pod struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
}

// ShellSession asks for a one-time terminal session in a container (create on
// pods/shell); its status carries the session ID the terminal then binds.
//
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
type ShellSession struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ShellSessionSpec   `json:"spec,omitempty"`
	Status ShellSessionStatus `json:"status,omitempty"`
}

// ShellSessionSpec says where and how the terminal runs. Defaults have been
// applied by the time a request reaches this type.
type ShellSessionSpec struct {
	// Container to open the shell in.
	Container string `json:"container,omitempty"`
	// Command to run.
	Command []string `json:"command,omitempty"`
	// TTY allocates a terminal. Plain bool, unlike the versioned *bool: the
	// versioned defaulter has already turned "unset" into true.
	TTY bool `json:"tty,omitempty"`
	// Cluster names a member cluster; empty means the cluster this server
	// runs in.
	Cluster string `json:"cluster,omitempty"`
}

// ShellSessionStatus is what the server hands back for the terminal to bind.
type ShellSessionStatus struct {
	// ID is the one-time session ID: 128 random bits as 32 hexadecimal
	// characters, so that it cannot be guessed. Bind it before
	// ExpirationTimestamp.
	ID string `json:"id,omitempty"`
	// ExpirationTimestamp bounds how long an unbound session is kept, so a
	// leaked ID is worthless soon after.
	ExpirationTimestamp metav1.Time `json:"expirationTimestamp,omitempty"`
}

// PodConnectOptions is the query of the connect subresources pods/attach and
// pods/console: the sub-path below the subresource, which the SockJS
// transport uses to tell its endpoints (info, websocket, xhr...) apart.
//
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
type PodConnectOptions struct {
	metav1.TypeMeta `json:",inline"`

	// Path is the sub-path below the subresource, with a leading slash.
	Path string `json:"path,omitempty"`
}
