package browser

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/kubecube-io/console-apiserver/test/framework"
)

// podURL is the page of another pod in the demo namespace.
func podURL(t *testing.T, pod string) string {
	t.Helper()
	const suffix = "/pods/demo/console/"
	if !strings.HasSuffix(demo.URL, suffix) {
		t.Fatalf("unexpected demo URL %s", demo.URL)
	}
	return strings.TrimSuffix(demo.URL, suffix) + "/pods/" + pod + "/console/"
}

// TestTypeCommand opens a terminal and types a command with real key events.
func TestTypeCommand(t *testing.T) {
	tb := newTab(t, 1000, 600)
	tb.open(demo.URL)
	s := tb.waitState("the session's target", func(s *state) bool { return s.Container != nil })
	if s.Namespace == nil || *s.Namespace != "demo" || s.Pod == nil || *s.Pod != "demo" || *s.Container != "shell" {
		t.Fatalf("target = %s, want demo/demo (shell)", jsonString(s))
	}
	if s.SessionID == nil || len(*s.SessionID) != 32 || s.Attempt != 1 {
		t.Fatalf("state = %s, want a 32-character session ID on attempt 1", jsonString(s))
	}
	tb.run("echo browser-$((6*7))")
	tb.waitLine("browser-42")
}

// TestResize changes the viewport and sees the shell's terminal size follow:
// the page refits xterm.js and sends a resize frame.
func TestResize(t *testing.T) {
	tb := newTab(t, 800, 420)
	tb.open(demo.URL)
	small := tb.waitSttySize()

	tb.mustDo("growing the viewport", chromedp.EmulateViewport(1400, 900))
	waitFor(tb, "the page to refit the terminal", `({rows: window.term.rows, cols: window.term.cols})`,
		func(s size) bool { return s.Rows > small.Rows && s.Cols > small.Cols })
	large := tb.waitSttySize()
	// 600 and 480 more CSS pixels are many rows and columns at 14px.
	if large.Rows < small.Rows+10 || large.Cols < small.Cols+30 {
		t.Fatalf("the terminal went from %s to %s; want clearly larger", small, large)
	}

	tb.mustDo("shrinking the viewport", chromedp.EmulateViewport(640, 360))
	waitFor(tb, "the page to refit the terminal", `({rows: window.term.rows, cols: window.term.cols})`,
		func(s size) bool { return s.Rows < small.Rows && s.Cols < small.Cols })
	tiny := tb.waitSttySize()
	t.Logf("stty size: %s at 800x420, %s at 1400x900, %s at 640x360", small, large, tiny)
}

// TestPodNotFound shows the server's 404 Status on the page.
func TestPodNotFound(t *testing.T) {
	tb := newTab(t, 1000, 600)
	tb.mustDo("navigating", chromedp.Navigate(podURL(t, "nope")))
	s := tb.waitState(`phase "error"`, func(s *state) bool { return s.Phase != "creating" })
	if s.Phase != "error" {
		t.Fatalf("phase = %q, want error", s.Phase)
	}
	tb.mustDo("waiting for the error panel", chromedp.WaitVisible(chromedp.CSS(`[data-testid="error-message"]`)))
	type shown struct {
		Title, Message, Status string
	}
	got, err := eval[shown](tb, `({
		Title: document.querySelector('[data-testid=error-title]').textContent,
		Message: document.querySelector('[data-testid=error-message]').textContent,
		Status: document.querySelector('[data-testid=status]').textContent,
	})`)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got.Message, `pods "nope" not found`) {
		t.Errorf("error message %q, want it to say pods \"nope\" not found", got.Message)
	}
	if !strings.Contains(got.Title, "404") {
		t.Errorf("error title %q, want the HTTP status 404", got.Title)
	}
	if !strings.Contains(got.Status, "404") || !strings.Contains(got.Status, `pods "nope" not found`) {
		t.Errorf("status line %q, want the 404 and the reason", got.Status)
	}
	if s.SessionID != nil {
		t.Errorf("session ID %q for a pod that does not exist", *s.SessionID)
	}
}

// TestExitAndReconnect ends the shell with a code, and starts a new session
// with the Reconnect button.
func TestExitAndReconnect(t *testing.T) {
	tb := newTab(t, 1000, 600)
	tb.open(demo.URL)
	reconnect := chromedp.CSS(`[data-testid="reconnect"]`)
	tb.mustDo("checking Reconnect is hidden while open", chromedp.WaitNotVisible(reconnect))

	tb.typeKeys("exit 7\r")
	s := tb.waitState(`phase "ended"`, func(s *state) bool { return s.Phase != "open" })
	if s.Phase != "ended" || s.ExitCode == nil || *s.ExitCode != 7 {
		t.Fatalf("state = %s, want phase ended with exit code 7", jsonString(s))
	}
	if s.CloseCode == nil || *s.CloseCode != 1 {
		t.Errorf("SockJS close code %v, want 1 (process exited)", jsonString(s.CloseCode))
	}
	status, err := eval[string](tb, `document.querySelector('[data-testid=status]').textContent`)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(status, "exit code 7") {
		t.Errorf("status line %q, want it to give the exit code 7", status)
	}

	tb.mustDo("clicking Reconnect", chromedp.Click(reconnect))
	s = tb.waitState("a second session", func(s *state) bool { return s.Attempt == 2 && s.Phase == "open" })
	if s.ExitCode != nil {
		t.Errorf("exit code %d carried over into the new session", *s.ExitCode)
	}
	tb.waitOpen()
	tb.mustDo("checking Reconnect is hidden again", chromedp.WaitNotVisible(reconnect))
	tb.run("echo again-$((3*3))")
	tb.waitLine("again-9")
}

// TestNoTrailingSlash opens the page's URL without its trailing slash: the
// server answers with a page that moves the browser on (kube-apiserver
// refuses redirects from aggregated servers), keeping the query, whose
// container and command then shape the session.
func TestNoTrailingSlash(t *testing.T) {
	tb := newTab(t, 1000, 600)
	url := strings.TrimSuffix(demo.URL, "/") + "?container=shell&command=sh"
	tb.mustDo("navigating to "+url, chromedp.Navigate(url))
	// The query comes back re-encoded on the way (keys sorted), so compare
	// its parameters, not its text.
	tb.waitTrue("the page at .../console/ with the query",
		`location.pathname.endsWith('/pods/demo/console/') && !!window.consoleState &&
		 new URLSearchParams(location.search).get('container') === 'shell' &&
		 new URLSearchParams(location.search).getAll('command').join() === 'sh'`)
	tb.waitOpen()
	s := tb.waitState("the container", func(s *state) bool { return s.Container != nil })
	if *s.Container != "shell" {
		t.Errorf("container %q, want shell", *s.Container)
	}
	// $0 names the command: sh as asked, where the default would be bash
	// (exec'd from sh -c).
	tb.run(`echo "zero=$0 slash-$((5+5))"`)
	tb.waitLine("zero=sh slash-10")
}

// TestScreenshot takes the README's picture of a terminal. With
// UPDATE_SCREENSHOT=1 it writes docs/images/console.png.
func TestScreenshot(t *testing.T) {
	const width, height = 1100, 650
	tb := newTab(t, width, height)
	tb.open(demo.URL)
	// A clean screen for the picture: without it, it opens with the warnings
	// bash prints on the kwok node, whose local exec gives the shell no
	// controlling terminal (a kwok trait, not the product's).
	tb.typeKeys("clear\r")
	tb.waitBuffer("a cleared screen", func(buf string) bool {
		var lines []string
		for _, l := range strings.Split(buf, "\n") {
			if l != "" {
				lines = append(lines, l)
			}
		}
		return len(lines) == 1 && promptRE.MatchString(lines[0])
	})
	// /usr rather than /: the shell runs on the test machine itself, and its
	// top folder is nobody's business in a README.
	tb.run("ls /usr; echo hello from console-apiserver")
	tb.waitLine("hello from console-apiserver")
	// Nothing to wait for beyond the prompt: the capture renders a fresh
	// frame of the page as it is.
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	img, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(img))
	if err != nil {
		t.Fatalf("the screenshot is not a PNG: %v", err)
	}
	if cfg.Width != width || cfg.Height != height {
		t.Errorf("screenshot is %dx%d, want %dx%d", cfg.Width, cfg.Height, width, height)
	}
	path := filepath.Join(t.TempDir(), "console.png")
	if os.Getenv("UPDATE_SCREENSHOT") == "1" {
		path = filepath.Join(framework.RepoRoot(), "docs", "images", "console.png")
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes)", path, len(img))
}
