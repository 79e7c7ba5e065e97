package harness

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times (100 on every
// Linux this runs on).
const clockTicks = 100

// CPU is a process's CPU time in seconds: its own, and that of its reaped
// children (for kwok: the commands it ran).
type CPU struct {
	Self, Children float64
}

// ReadCPU reads /proc/PID/stat.
func ReadCPU(pid int) (CPU, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return CPU{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return CPU{}, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	// Fields after the command name start at field 3 (state).
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return CPU{}, fmt.Errorf("short /proc/%d/stat", pid)
	}
	num := func(k int) float64 { v, _ := strconv.ParseFloat(f[k-3], 64); return v }
	return CPU{
		Self:     (num(14) + num(15)) / clockTicks,
		Children: (num(16) + num(17)) / clockTicks,
	}, nil
}

// CPUSnapshot is the CPU of several named processes at one moment.
type CPUSnapshot map[string]CPU

// SnapshotCPU reads every process of pids; missing ones are left out.
func SnapshotCPU(pids map[string]int) CPUSnapshot {
	out := CPUSnapshot{}
	for name, pid := range pids {
		if c, err := ReadCPU(pid); err == nil {
			out[name] = c
		}
	}
	return out
}

// Since is the CPU each process spent from before to s (self only, plus
// "kwok-commands" for kwok's children).
func (s CPUSnapshot) Since(before CPUSnapshot) map[string]float64 {
	out := map[string]float64{}
	for name, c := range s {
		b := before[name]
		out[name] = c.Self - b.Self
		if name == "kwok" {
			out["kwok-commands"] = c.Children - b.Children
		}
	}
	return out
}

// ReadRSS is a process's resident set size in bytes.
func ReadRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// ReadThreads is a process's thread count.
func ReadThreads(pid int) (int, error) {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	return len(entries), err
}

// ReadSystemBusy is the CPU time, in seconds, all CPUs of the machine have
// spent busy (not idle or waiting for I/O) since boot, from /proc/stat.
func ReadSystemBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	var busy float64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 7 { // steal, guest and guest_nice are not time spent here
			break
		}
		x, _ := strconv.ParseFloat(v, 64)
		busy += x
	}
	return busy / clockTicks
}

// LoadAvg is /proc/loadavg's first three fields.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// MachineInfo is nproc, memory and the CPU model.
func MachineInfo() string {
	model := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	mem := "?"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				mem = fmt.Sprintf("%.1f GiB", kb/(1<<20))
			}
		}
	}
	return fmt.Sprintf("%d CPUs (%s), %s memory", runtime.NumCPU(), model, mem)
}

// ReadSyscalls is a process's read and write system calls so far
// (/proc/PID/io: syscr + syscw).
func ReadSyscalls(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, err
	}
	var n float64
	for _, l := range strings.Split(string(b), "\n") {
		for _, k := range []string{"syscr:", "syscw:"} {
			if v, ok := strings.CutPrefix(l, k); ok {
				x, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				n += x
			}
		}
	}
	return n, nil
}
