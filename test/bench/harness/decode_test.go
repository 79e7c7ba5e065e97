package harness

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
)

// TestUnquoteJSON checks the benchmark client's decoder against
// encoding/json on strings with every kind of escape (no timing here).
func TestUnquoteJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"a", "\r\n", "\"", "\\", "/", "\t", "\x01", "\x7f", "é", "€", "😀", "<", "\u2028", "{\"Op\":\"stdout\"}"}
	for i := 0; i < 2000; i++ {
		var want string
		for j := rng.IntN(40); j > 0; j-- {
			want += alphabet[rng.IntN(len(alphabet))]
		}
		for _, nested := range []bool{false, true} {
			enc, _ := json.Marshal(want)
			if nested {
				enc, _ = json.Marshal(string(enc))
			}
			input := append(append([]byte{}, enc...), ",\"next\"]"...)
			got, n, err := unquoteJSON(nil, input)
			if err != nil || n != len(enc) {
				t.Fatalf("%q: n=%d (want %d) err=%v", enc, n, len(enc), err)
			}
			var ref string
			_ = json.Unmarshal(enc, &ref)
			if string(got) != ref {
				t.Fatalf("%q: got %q, want %q", enc, got, ref)
			}
		}
	}
	if _, _, err := unquoteJSON(nil, []byte(`"abc`)); err == nil {
		t.Fatal("unterminated string accepted")
	}
}
