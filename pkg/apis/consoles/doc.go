// Package consoles is the internal, hub version of the consoles.kubecube.io
// API. Registry and validation code work on these types only, so that every
// served version converts to one shape before any decision is made.
//
// +k8s:deepcopy-gen=package
// +groupName=consoles.kubecube.io
package consoles
