package sockjs

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Ops of the terminal protocol. The names and the untagged field names below
// are what the seed and the Kubernetes Dashboard front-ends speak.
const (
	opBind   = "bind"
	opStdin  = "stdin"
	opResize = "resize"
	opStdout = "stdout"
	opToast  = "toast"
	// opExit is ours; front-ends that predate it ignore unknown Ops.
	opExit = "exit"
)

// Raw SockJS messages that are not JSON: a keep-alive the seed's front-end sends.
const (
	pingMessage = "ping"
	pongMessage = "pong"
)

// maxTerminalDim bounds rows and columns: no screen is that large, and a
// bogus size must not reach the kubelet.
const maxTerminalDim = 10000

// SockJS close codes and reasons the seed's front-ends understand.
const (
	closeExited      = 1
	closeFailed      = 2
	exitedReason     = "Process exited"
	shuttingDownText = "server is shutting down"
)

// frame is one decoded client message.
type frame struct {
	Op        string
	Data      string
	SessionID string
	Rows      int64
	Cols      int64
}

var (
	errInvalidText = errors.New("frame is not valid UTF-8 (or holds an unpaired surrogate escape)")
	errNotBind     = errors.New("the first frame must be a bind")
)

// decodeFrame parses and validates one client message. Every error is a
// protocol violation the session ends on, so the checks are all here where
// the fuzzer can reach them.
func decodeFrame(msg string) (frame, error) {
	// encoding/json would quietly turn bad bytes and lone surrogates into
	// U+FFFD; a terminal should not type characters nobody sent.
	if err := checkText(msg); err != nil {
		return frame{}, err
	}
	var f frame
	if err := json.Unmarshal([]byte(msg), &f); err != nil {
		return frame{}, fmt.Errorf("malformed frame: %w", err)
	}
	switch f.Op {
	case opBind:
		if f.SessionID == "" {
			return frame{}, errors.New("bind frame without a SessionID")
		}
	case opStdin:
	case opResize:
		if f.Rows < 1 || f.Rows > maxTerminalDim || f.Cols < 1 || f.Cols > maxTerminalDim {
			return frame{}, fmt.Errorf("resize to %dx%d is out of range (1..%d)", f.Cols, f.Rows, maxTerminalDim)
		}
	default:
		return frame{}, fmt.Errorf("unknown operation %q", truncate(f.Op, 32))
	}
	return f, nil
}

// checkText rejects invalid UTF-8 and JSON \u escapes of unpaired UTF-16
// surrogates. A backslash outside a string is a JSON syntax error that the
// decoder reports, so scanning every backslash is enough.
func checkText(s string) error {
	if !utf8.ValidString(s) {
		return errInvalidText
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			continue
		}
		if i+1 >= len(s) {
			return nil // syntax error, left to the decoder
		}
		if s[i+1] != 'u' {
			i++ // skip the escaped character, which may be a backslash
			continue
		}
		r, ok := hex4(s, i+2)
		if !ok {
			return nil // syntax error, left to the decoder
		}
		i += 5
		switch {
		case r >= 0xDC00 && r <= 0xDFFF:
			return errInvalidText
		case r >= 0xD800 && r <= 0xDBFF:
			if i+6 >= len(s) || s[i+1] != '\\' || s[i+2] != 'u' {
				return errInvalidText
			}
			lo, ok := hex4(s, i+3)
			if !ok || lo < 0xDC00 || lo > 0xDFFF {
				return errInvalidText
			}
			i += 6
		}
	}
	return nil
}

func hex4(s string, at int) (rune, bool) {
	if at+4 > len(s) {
		return 0, false
	}
	v, err := strconv.ParseUint(s[at:at+4], 16, 16)
	return rune(v), err == nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// Cut on a rune boundary so the toast stays valid text.
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// serverFrame is what the server sends besides stdout, which has its own
// allocation-conscious encoder.
type serverFrame struct {
	Op   string
	Data string
	Code *int `json:",omitempty"`
}

func encodeFrame(f serverFrame) string {
	// Marshal cannot fail on this struct; invalid UTF-8 in Data is replaced.
	b, _ := json.Marshal(f)
	return string(b)
}

func toastFrame(text string) string { return encodeFrame(serverFrame{Op: opToast, Data: text}) }

func exitFrame(code int) string {
	return encodeFrame(serverFrame{Op: opExit, Data: exitedReason, Code: &code})
}
