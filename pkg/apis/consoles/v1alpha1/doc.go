// Package v1alpha1 is the first served version of the consoles.kubecube.io
// API. Its types are what clients send and receive; the server converts them
// to the internal package before acting on them.
//
// The OpenAPI model package is the name the scheme would derive from the Go
// import path anyway; declaring it makes openapi-gen key our definitions by
// the same name the server's definition namer uses, so they get their
// x-kubernetes-group-version-kind.
//
// +k8s:deepcopy-gen=package
// +k8s:conversion-gen=github.com/kubecube-io/console-apiserver/pkg/apis/consoles
// +k8s:defaulter-gen=TypeMeta
// +k8s:openapi-gen=true
// +k8s:openapi-model-package=com.github.kubecube-io.console-apiserver.pkg.apis.consoles.v1alpha1
// +groupName=consoles.kubecube.io
package v1alpha1
