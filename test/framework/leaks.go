package framework

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// LiveProcessesInGroups lists the PIDs of processes (zombies excluded) whose
// process group is one of pgids: what the plane would leave behind.
func LiveProcessesInGroups(pgids []int) []int {
	want := map[int]bool{}
	for _, g := range pgids {
		want[g] = true
	}
	var out []int
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// The command name is in parentheses and may contain spaces.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(s[i+1:])
		if len(fields) < 3 || fields[0] == "Z" || fields[0] == "X" {
			continue
		}
		if pgrp, _ := strconv.Atoi(fields[2]); want[pgrp] {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
			out = append(out, pid)
		}
	}
	return out
}
