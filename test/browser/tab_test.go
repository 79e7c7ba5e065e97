package browser

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// Generous: the machine's 2 cores are shared with other test runs, and
// things were seen to take 5x longer under load.
const (
	tabTimeout  = 4 * time.Minute
	stepTimeout = time.Minute
	pollEvery   = 100 * time.Millisecond
)

// bufferJS is the terminal's whole buffer (scrollback included) as text: one
// line per logical line, soft-wrapped rows joined, trailing blanks trimmed.
const bufferJS = `(() => {
  if (!window.term) return '';
  const b = window.term.buffer.active;
  const out = [];
  for (let i = 0; i < b.length; i++) {
    const l = b.getLine(i);
    if (!l) continue;
    const s = l.translateToString(false);
    if (l.isWrapped && out.length > 0) out[out.length - 1] += s;
    else out.push(s);
  }
  return out.map((s) => s.trimEnd()).join('\n');
})()`

// promptRE matches a line that starts with the shell's prompt, user@host:dir
// then # or $. The kwok node sets PS1 to '\u@kwok:\w\$ ', but bash, being
// interactive, takes the host's from ~/.bashrc (e.g. root@vm:/tmp/x#); sh
// shows kwok's unexpanded. Output lines of the tests' commands have no '@'.
var promptRE = regexp.MustCompile(`(?m)^[^\s@]+@[^\s:]+:[^#$\n]*[#$]`)

// tab is one browser tab in a browser context of its own.
type tab struct {
	t   *testing.T
	ctx context.Context

	mu      sync.Mutex
	console []string // the page's console messages and uncaught exceptions

	typed int // stty questions asked, to tell their answers apart
}

// newTab opens a blank tab with a viewport of width x height CSS pixels.
// An uncaught exception in the page fails the test; on failure the tab's
// cleanup logs what the page knew.
func newTab(t *testing.T, width, height int64) *tab {
	t.Helper()
	tb := &tab{t: t}
	// The tab closes when this deadline passes: a bound on a stuck test
	// without a timeout on the tab's first Run (which would tie the tab's
	// life to that one call).
	parent, cancelParent := context.WithTimeout(browserCtx, tabTimeout)
	ctx, cancel := chromedp.NewContext(parent, chromedp.WithNewBrowserContext(), chromedp.WithListener(tb.listen))
	t.Cleanup(func() {
		cancel()
		cancelParent()
	})
	tb.ctx = ctx
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(width, height)); err != nil {
		t.Fatalf("opening a tab: %v", err)
	}
	t.Cleanup(func() {
		tb.mu.Lock()
		var uncaught []string
		for _, l := range tb.console {
			if strings.HasPrefix(l, "uncaught: ") {
				uncaught = append(uncaught, l)
			}
		}
		tb.mu.Unlock()
		if len(uncaught) > 0 {
			t.Errorf("the page threw:\n%s", strings.Join(uncaught, "\n"))
		}
		if t.Failed() {
			tb.dump()
		}
	})
	return tb
}

func (tb *tab) listen(ev any) {
	var line string
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		var args []string
		for _, a := range ev.Args {
			if a.Value != nil {
				args = append(args, string(a.Value))
			} else {
				args = append(args, a.Description)
			}
		}
		line = fmt.Sprintf("console.%s: %s", ev.Type, strings.Join(args, " "))
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		line = "uncaught: " + d.Text
		if d.Exception != nil {
			line += " " + d.Exception.Description
		}
	default:
		return
	}
	tb.mu.Lock()
	tb.console = append(tb.console, line)
	tb.mu.Unlock()
}

// dump logs the page's state, its status line, the terminal and the
// console, to say why a test failed.
func (tb *tab) dump() {
	ctx, cancel := context.WithTimeout(tb.ctx, 10*time.Second)
	defer cancel()
	if s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify({
		url: location.href, state: window.consoleState,
		status: document.querySelector('[data-testid=status]')?.textContent,
		rows: window.term?.rows, cols: window.term?.cols,
		body: window.term ? undefined : document.body?.innerText?.slice(0, 2000),
	})`)); err == nil {
		tb.t.Logf("page: %s", s)
	} else {
		tb.t.Logf("page state unavailable: %v", err)
	}
	if s, err := chromedp.Run(ctx, chromedp.Evaluate[string](bufferJS)); err == nil {
		tb.t.Logf("terminal:\n%s", s)
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if len(tb.console) > 0 {
		tb.t.Logf("browser console:\n%s", strings.Join(tb.console, "\n"))
	}
}

// do runs actions with a step's timeout.
func (tb *tab) do(actions ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	return chromedp.Do(ctx, actions...)
}

func (tb *tab) mustDo(what string, actions ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	if err := tb.do(actions...); err != nil {
		tb.t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression, with a step's timeout.
func eval[T any](tb *tab, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr))
}

// waitFor polls cond, a Go check of the value of the JavaScript expression
// expr, until it holds. It polls from Go rather than with chromedp.Poll: a
// poll inside the page dies with the page, and some waits span a navigation.
func waitFor[T any](tb *tab, what, expr string, cond func(T) bool) T {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	var (
		last    T
		lastErr error
	)
	for {
		v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
		if err == nil {
			if cond(v) {
				return v
			}
			last, lastErr = v, nil
		} else if ctx.Err() == nil {
			// Mid-navigation the page has no context to evaluate in yet.
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				tb.t.Fatalf("waiting for %s: %v (last error: %v)", what, ctx.Err(), lastErr)
			}
			tb.t.Fatalf("waiting for %s: %v (last value: %s)", what, ctx.Err(), jsonString(last))
		case <-tick.C:
		}
	}
}

func jsonString(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// waitTrue waits until the JavaScript expression is true.
func (tb *tab) waitTrue(what, expr string) {
	tb.t.Helper()
	waitFor(tb, what, expr, func(ok bool) bool { return ok })
}

// state is window.consoleState.
type state struct {
	Phase       string  `json:"phase"`
	SessionID   *string `json:"sessionID"`
	ExitCode    *int    `json:"exitCode"`
	LastToast   *string `json:"lastToast"`
	Error       *string `json:"error"`
	CloseCode   *int    `json:"closeCode"`
	CloseReason *string `json:"closeReason"`
	Attempt     int     `json:"attempt"`
	Namespace   *string `json:"namespace"`
	Pod         *string `json:"pod"`
	Container   *string `json:"container"`
}

const stateJS = `window.consoleState || null`

// waitState waits until the page's state satisfies cond.
func (tb *tab) waitState(what string, cond func(*state) bool) *state {
	tb.t.Helper()
	return waitFor(tb, what, stateJS, func(s *state) bool { return s != nil && cond(s) })
}

// open navigates to url (through the demo's proxy) and waits for a live
// terminal with a prompt.
func (tb *tab) open(url string) {
	tb.t.Helper()
	tb.mustDo("navigating to "+url, chromedp.Navigate(url))
	tb.waitOpen()
}

// waitOpen waits for an open session whose shell has printed its prompt.
func (tb *tab) waitOpen() {
	tb.t.Helper()
	tb.waitState(`phase "open"`, func(s *state) bool { return s.Phase == "open" })
	tb.waitBuffer("a shell prompt", func(buf string) bool { return promptRE.MatchString(buf) })
}

// buffer is the terminal's text.
func (tb *tab) buffer() string {
	tb.t.Helper()
	s, err := eval[string](tb, bufferJS)
	if err != nil {
		tb.t.Fatalf("reading the terminal: %v", err)
	}
	return s
}

// waitBuffer waits until the terminal's text satisfies cond, and returns it.
func (tb *tab) waitBuffer(what string, cond func(string) bool) string {
	tb.t.Helper()
	return waitFor(tb, what+" in the terminal", bufferJS, cond)
}

// waitLine waits for a line of the terminal that is exactly line: output,
// not the echo of the command that printed it.
func (tb *tab) waitLine(line string) {
	tb.t.Helper()
	tb.waitBuffer(fmt.Sprintf("the line %q", line), func(buf string) bool {
		for _, l := range strings.Split(buf, "\n") {
			if l == line {
				return true
			}
		}
		return false
	})
}

// prompts counts the prompts in the terminal.
func prompts(buf string) int { return len(promptRE.FindAllStringIndex(buf, -1)) }

// typeKeys types text as key events into xterm.js's input element, as a
// person's keyboard would: per rune a keyDown carrying the text, then a keyUp
// ("\r" is Enter).
//
// Not chromedp.KeyEvent: it sends a separate char event after a keyDown
// without text, and xterm.js then takes each character twice (once from
// the keypress, again from the input event it does not recognise as the
// keypress's own). A keyDown with text is what Chromium itself makes of a
// real key press (keydown, keypress, input in one go).
func (tb *tab) typeKeys(text string) {
	tb.t.Helper()
	// The textarea is 0x0 and off-screen by design, so chromedp.SendKeys
	// (which waits for a visible node) never finds it: focus it, then send
	// keys to the focused element.
	textarea := chromedp.CSS(".xterm-helper-textarea")
	keys := chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		for _, r := range text {
			var down, up input.DispatchKeyEventParams
			for _, ev := range kb.Encode(r) {
				switch ev.Type {
				case input.DispatchKeyEventTypeKeyDown:
					down = *ev
				case input.DispatchKeyEventTypeKeyUp:
					up = *ev
				case input.DispatchKeyEventTypeChar:
					down.Text, down.UnmodifiedText = ev.Text, ev.UnmodifiedText
				}
			}
			for _, ev := range []input.DispatchKeyEventParams{down, up} {
				if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, ev); err != nil {
					return err
				}
			}
		}
		return nil
	})
	tb.mustDo(fmt.Sprintf("typing %q", text), chromedp.Focus(textarea), keys)
}

// run types a command and Enter, and waits until the shell has printed its
// next prompt, so what the command printed is in the buffer.
func (tb *tab) run(cmd string) string {
	tb.t.Helper()
	before := prompts(tb.buffer())
	tb.typeKeys(cmd + "\r")
	return tb.waitBuffer(fmt.Sprintf("the prompt after %q", cmd), func(buf string) bool { return prompts(buf) > before })
}

// size is a terminal size.
type size struct {
	Rows int `json:"rows"`
	Cols int `json:"cols"`
}

func (s size) String() string { return fmt.Sprintf("%dx%d", s.Rows, s.Cols) }

// pageSize is the size xterm.js fitted the terminal to.
func (tb *tab) pageSize() size {
	tb.t.Helper()
	s, err := eval[size](tb, `({rows: window.term.rows, cols: window.term.cols})`)
	if err != nil {
		tb.t.Fatalf("reading the terminal's size: %v", err)
	}
	return s
}

var sttyRE = regexp.MustCompile(`(?m)^sz(\d+)=(\d+) (\d+)$`)

// sttySize asks the shell for its terminal size.
func (tb *tab) sttySize() size {
	tb.t.Helper()
	tb.typed++
	n := tb.typed
	// The marker keeps this answer apart from earlier ones; the echo of the
	// command itself has "$(" where the digits are, so it never matches.
	buf := tb.run(fmt.Sprintf(`echo "sz%d=$(stty size)"`, n))
	for _, m := range sttyRE.FindAllStringSubmatch(buf, -1) {
		if m[1] == fmt.Sprint(n) {
			var s size
			fmt.Sscan(m[2], &s.Rows)
			fmt.Sscan(m[3], &s.Cols)
			return s
		}
	}
	tb.t.Fatalf("no answer from stty size (marker sz%d) in the terminal:\n%s", n, buf)
	return size{}
}

// waitSttySize asks the shell for its size until it equals the page's
// terminal size, and returns it. The page sends a resize frame after it fits
// the terminal; the shell sees it a moment later, so the first answers may
// still be the old size.
func (tb *tab) waitSttySize() size {
	tb.t.Helper()
	deadline := time.Now().Add(stepTimeout)
	for {
		want := tb.pageSize()
		got := tb.sttySize()
		if got == want {
			return got
		}
		if time.Now().After(deadline) {
			tb.t.Fatalf("the shell's size is %s, the page's terminal %s", got, want)
		}
	}
}
