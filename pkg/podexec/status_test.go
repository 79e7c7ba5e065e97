package podexec

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
)

type fakeUpgrader struct{ conn httpstream.Connection }

func (f fakeUpgrader) NewConnection(*http.Response) (httpstream.Connection, error) {
	return f.conn, nil
}

type fakeConn struct {
	httpstream.Connection
	errorStream []byte
}

func (c *fakeConn) CreateStream(h http.Header) (httpstream.Stream, error) {
	if h.Get(corev1.StreamType) == corev1.StreamTypeError {
		return &fakeStream{r: bytes.NewReader(c.errorStream)}, nil
	}
	return &fakeStream{r: bytes.NewReader(nil)}, nil
}

type fakeStream struct {
	httpstream.Stream
	r io.Reader
}

func (s *fakeStream) Read(p []byte) (int, error) { return s.r.Read(p) }

func TestStatusUpgraderTellsALostStreamFromAnEnd(t *testing.T) {
	for _, tc := range []struct {
		protocol string
		status   string
		lost     bool
	}{
		{"v4.channel.k8s.io", `{"status":"Success"}`, false},
		{"v4.channel.k8s.io", "", true},
		{"v5.channel.k8s.io", "", true},
		{"v3.channel.k8s.io", "", false}, // no status on success before v4
	} {
		u := &statusUpgrader{Upgrader: fakeUpgrader{conn: &fakeConn{errorStream: []byte(tc.status)}}}
		resp := &http.Response{Header: http.Header{}}
		resp.Header.Set(httpstream.HeaderProtocolVersion, tc.protocol)
		conn, err := u.NewConnection(resp)
		if err != nil {
			t.Fatal(err)
		}
		for _, typ := range []string{corev1.StreamTypeStdout, corev1.StreamTypeError} {
			h := http.Header{}
			h.Set(corev1.StreamType, typ)
			s, err := conn.CreateStream(h)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.ReadAll(s)
		}
		if got := u.lost(); got != tc.lost {
			t.Errorf("%s with status %q: lost = %v", tc.protocol, tc.status, got)
		}
	}
	if (&statusUpgrader{}).lost() {
		t.Error("lost before any connection")
	}
}
