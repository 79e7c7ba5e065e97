package peers

import (
	"testing"

	"go.uber.org/goleak"
)

// Forwarding relays streams between goroutines of three parties; whatever a
// test leaves running is a leak to find.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
