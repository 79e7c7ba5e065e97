package framework

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
)

// AuditEvents reads kube-apiserver's audit log and returns the events match
// accepts (all when match is nil).
func (cp *ControlPlane) AuditEvents(match func(*auditv1.Event) bool) ([]auditv1.Event, error) {
	f, err := os.Open(cp.AuditLogPath)
	if err != nil {
		return nil, fmt.Errorf("opening audit log: %w", err)
	}
	defer f.Close()
	var out []auditv1.Event
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev auditv1.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			// The last line may be half written.
			continue
		}
		if match == nil || match(&ev) {
			out = append(out, ev)
		}
	}
	return out, sc.Err()
}
