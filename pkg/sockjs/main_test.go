package sockjs

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test also checks for leaks on its own (see newEnv); this catches
// what tests without an env leave behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
