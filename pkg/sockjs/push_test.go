package sockjs

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/tools/remotecommand"
)

func TestStdinPushKeepsOrderAndEarlyKeys(t *testing.T) {
	streamUp := 0
	p := newStdinPipe(func() { streamUp++ })
	if err := p.write([]byte("early ")); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got bytes.Buffer
	send := func(b []byte) error {
		mu.Lock()
		defer mu.Unlock()
		got.Write(b)
		return nil
	}
	// Keys typed while the buffered ones are being pushed come after them.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 100; i++ {
			_ = p.write([]byte(fmt.Sprintf("%d,", i)))
		}
	}()
	if err := p.PushTo(send); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	want := "early "
	for i := 0; i < 100; i++ {
		want += fmt.Sprintf("%d,", i)
	}
	mu.Lock()
	defer mu.Unlock()
	if got.String() != want {
		t.Fatalf("got %q, want %q", got.String(), want)
	}
	if streamUp != 1 {
		t.Fatalf("stream up %d times", streamUp)
	}
	p.close()
	if err := p.write([]byte("late")); err == nil {
		t.Fatal("write after close accepted")
	}
	if err := p.PushTo(send); err == nil {
		t.Fatal("PushTo after close accepted")
	}
}

func TestStdinPipeWriteTo(t *testing.T) {
	p := newStdinPipe(nil)
	_ = p.write([]byte("ab"))
	var out syncBuf
	done := make(chan error, 1)
	go func() { _, err := p.WriteTo(&out); done <- err }()
	_ = p.write([]byte("cd"))
	deadline := time.Now().Add(5 * time.Second)
	for out.String() != "abcd" && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	p.close()
	if err := <-done; err != nil || out.String() != "abcd" {
		t.Fatalf("got %q, %v", out.String(), err)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestResizePushSendsLatestAndLetsGo(t *testing.T) {
	q := newSizeQueue(nil)
	q.push(80, 24) // before the stream is up: kept
	got := make(chan remotecommand.TerminalSize, 16)
	release := make(chan struct{})
	q.PushTo(func(s remotecommand.TerminalSize) error {
		got <- s
		<-release
		return nil
	})
	if s := <-got; s.Width != 80 || s.Height != 24 {
		t.Fatalf("first size %+v", s)
	}
	// While one is being sent, later ones collapse into the latest.
	q.push(90, 30)
	q.push(100, 40)
	release <- struct{}{}
	if s := <-got; s.Width != 100 || s.Height != 40 {
		t.Fatalf("second size %+v", s)
	}
	close(release)
	q.push(120, 50)
	if s := <-got; s.Width != 120 {
		t.Fatalf("third size %+v", s)
	}
	// The sender goroutine ends when nothing is pending.
	deadline := time.Now().Add(5 * time.Second)
	for {
		q.mu.Lock()
		sending := q.sending
		q.mu.Unlock()
		if !sending {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("sender still running")
		}
		time.Sleep(time.Millisecond)
	}
	q.close()
	q.push(1, 1)
	select {
	case s := <-got:
		t.Fatalf("size %+v sent after close", s)
	case <-time.After(20 * time.Millisecond):
	}
}
