package podexec

import (
	"errors"
	"net/http"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/transport/spdy"
)

// errStreamLost is an exec stream that ended without the kubelet saying how
// the command ended.
var errStreamLost = errors.New("the connection to the container was lost before the command ended")

// statusUpgrader notes whether the kubelet reported how the command ended.
// From protocol v4 on, the kubelet ends every exec with a status on the
// error stream, success included; client-go reports an error stream that
// ends empty, as when kube-apiserver or the kubelet goes away mid-session,
// as a success, which the terminal would show as "Process exited" with
// code 0.
type statusUpgrader struct {
	spdy.Upgrader
	protocol atomic.Pointer[string]
	reported atomic.Bool
}

func (u *statusUpgrader) NewConnection(resp *http.Response) (httpstream.Connection, error) {
	conn, err := u.Upgrader.NewConnection(resp)
	if err != nil {
		return nil, err
	}
	p := resp.Header.Get(httpstream.HeaderProtocolVersion)
	u.protocol.Store(&p)
	return &statusConn{Connection: conn, u: u}, nil
}

// lost reports whether the kubelet should have reported a status and did not.
func (u *statusUpgrader) lost() bool {
	p := u.protocol.Load()
	if p == nil || u.reported.Load() {
		return false
	}
	switch *p {
	case "v4.channel.k8s.io", "v5.channel.k8s.io":
		return true
	}
	return false
}

type statusConn struct {
	httpstream.Connection
	u *statusUpgrader
}

func (c *statusConn) CreateStream(headers http.Header) (httpstream.Stream, error) {
	s, err := c.Connection.CreateStream(headers)
	if err != nil || headers.Get(corev1.StreamType) != corev1.StreamTypeError {
		return s, err
	}
	return &statusStream{Stream: s, u: c.u}, nil
}

type statusStream struct {
	httpstream.Stream
	u *statusUpgrader
}

func (s *statusStream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	if n > 0 {
		s.u.reported.Store(true)
	}
	return n, err
}
