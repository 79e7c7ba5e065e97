package sockjs

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestDecodeFrame(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    frame
		wantErr string
	}{
		{in: `{"Op":"bind","SessionID":"3a9ae585ceaa6e3b0c72c31b0c215187"}`, want: frame{Op: opBind, SessionID: "3a9ae585ceaa6e3b0c72c31b0c215187"}},
		{in: `{"Op":"stdin","Data":"ls -la\r"}`, want: frame{Op: opStdin, Data: "ls -la\r"}},
		{in: `{"Op":"stdin","Data":"\ud83d\ude00 \u00e9"}`, want: frame{Op: opStdin, Data: "😀 é"}},
		{in: `{"Op":"stdin","Data":"\\ud800"}`, want: frame{Op: opStdin, Data: `\ud800`}}, // an escaped backslash, not an escape
		{in: `{"Op":"resize","Rows":24,"Cols":80}`, want: frame{Op: opResize, Rows: 24, Cols: 80}},
		{in: `{"Op":"resize","Rows":10000,"Cols":1}`, want: frame{Op: opResize, Rows: 10000, Cols: 1}},
		{in: `{"Op":"stdin","Data":"x","Extra":1}`, want: frame{Op: opStdin, Data: "x"}},
		{in: `{"Op":"resize","Rows":0,"Cols":80}`, wantErr: "out of range"},
		{in: `{"Op":"resize","Rows":24,"Cols":10001}`, wantErr: "out of range"},
		{in: `{"Op":"resize","Rows":24}`, wantErr: "out of range"},
		{in: `{"Op":"resize","Rows":1e2,"Cols":80}`, wantErr: "malformed"},
		{in: `{"Op":"resize","Rows":99999999999999999999,"Cols":80}`, wantErr: "malformed"},
		{in: `{"Op":"stdin","Data":"\ud800"}`, wantErr: "UTF-8"},
		{in: `{"Op":"stdin","Data":"\udc00\ud800"}`, wantErr: "UTF-8"},
		{in: `{"Op":"stdin","Data":"\ud800\u0041"}`, wantErr: "UTF-8"},
		{in: "{\"Op\":\"stdin\",\"Data\":\"\xff\"}", wantErr: "UTF-8"},
		{in: `{"Op":"stdin","Data":5}`, wantErr: "malformed"},
		{in: `{"Op":"bind"}`, wantErr: "SessionID"},
		{in: `{"Op":"stdout","Data":"x"}`, wantErr: "unknown operation"},
		{in: `null`, wantErr: "unknown operation"},
		{in: `{"Op":"stdin"} trailing`, wantErr: "malformed"},
		{in: ``, wantErr: "malformed"},
		{in: `{"Op":"stdin","Data":"\u12`, wantErr: "malformed"},
	} {
		got, err := decodeFrame(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("decodeFrame(%q) = %+v, %v; want error with %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("decodeFrame(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestServerFrames(t *testing.T) {
	if got := exitFrame(3); got != `{"Op":"exit","Data":"Process exited","Code":3}` {
		t.Fatalf("exit frame %s", got)
	}
	if got := toastFrame("a\"b"); got != `{"Op":"toast","Data":"a\"b"}` {
		t.Fatalf("toast frame %s", got)
	}
	if got := truncate("ééé", 3); got != "é…" {
		t.Fatalf("truncate = %q", got)
	}
}

// FuzzDecodeFrame: no input panics, and what is accepted is well-formed.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range []string{
		`{"Op":"bind","SessionID":"3a9ae585ceaa6e3b0c72c31b0c215187"}`,
		`{"Op":"stdin","Data":"\u001b[A\r"}`,
		`{"Op":"resize","Rows":24,"Cols":80}`,
		`{"Op":"stdin","Data":"\ud83d\ude00"}`,
		`{"Op":"stdin","Data":"\ud83d"}`,
		`ping`, `{}`, `[]`, `"x"`, `{"Op":`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, msg string) {
		fr, err := decodeFrame(msg)
		if err != nil {
			return
		}
		if !utf8.ValidString(msg) || !utf8.ValidString(fr.Data) || !utf8.ValidString(fr.SessionID) {
			t.Fatalf("accepted invalid text %q", msg)
		}
		if strings.ContainsRune(fr.Data, utf8.RuneError) && !strings.ContainsRune(msg, utf8.RuneError) && !strings.Contains(strings.ToLower(msg), `\ufffd`) {
			t.Fatalf("decoding made up a replacement character: %q -> %q", msg, fr.Data)
		}
		switch fr.Op {
		case opBind:
			if fr.SessionID == "" {
				t.Fatalf("bind without ID accepted: %q", msg)
			}
		case opStdin:
		case opResize:
			if fr.Rows < 1 || fr.Rows > maxTerminalDim || fr.Cols < 1 || fr.Cols > maxTerminalDim {
				t.Fatalf("resize %dx%d accepted", fr.Cols, fr.Rows)
			}
		default:
			t.Fatalf("op %q accepted", fr.Op)
		}
		// What we accept re-encodes and decodes to the same frame.
		b, err := json.Marshal(fr)
		if err != nil {
			t.Fatal(err)
		}
		again, err := decodeFrame(string(b))
		if err != nil || again != fr {
			t.Fatalf("round trip of %q: %+v, %v", msg, again, err)
		}
	})
}
