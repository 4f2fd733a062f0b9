package exec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// taskState is the launcher state that StartTask returns and StopTask and
// WatchTask accept, encoded as JSON.
//
// PIDs are reused, so a PID alone does not identify a process after the
// host restarts. The start time, which the kernel sets at fork and exec
// does not change, distinguishes a reused PID. The boot ID distinguishes
// PIDs and start times of an earlier boot.
type taskState struct {
	PID int `json:"pid"`
	// PGID is the runner's process group, which the launcher creates with
	// the runner as its leader, so it always equals PID.
	PGID int `json:"pgid"`
	// StartTime is field 22 of /proc/PID/stat: clock ticks from boot to the
	// process start.
	StartTime uint64 `json:"start_time"`
	// BootID is /proc/sys/kernel/random/boot_id at start, or empty when it
	// could not be read.
	BootID   string `json:"boot_id,omitempty"`
	TaskID   string `json:"task_id,omitempty"`
	RunnerID string `json:"runner_id,omitempty"`
	// StdoutPath and StderrPath are the absolute paths of the files that
	// receive the runner's stdout and stderr. They are empty in states
	// that ListTasks returns for runners whose output it cannot attribute
	// to files in the output directory.
	StdoutPath string `json:"stdout_path,omitempty"`
	StderrPath string `json:"stderr_path,omitempty"`
}

// decodeState parses a launcher state. It returns nil for an empty state,
// which is a task that never started.
func decodeState(state []byte) (*taskState, error) {
	if len(bytes.TrimSpace(state)) == 0 {
		return nil, nil
	}
	var st taskState
	if err := json.Unmarshal(state, &st); err != nil {
		return nil, fmt.Errorf("invalid exec launcher state: %w; pass the state returned by StartTask or ListTasks", err)
	}
	// PID 1 and group 1 are never runners, and kill(2) with -1 or 0 would
	// signal every process or the host's own group, so reject them early.
	if st.PID <= 1 {
		return nil, fmt.Errorf("invalid exec launcher state: pid %d is not a runner process; pass the state returned by StartTask or ListTasks", st.PID)
	}
	if st.PGID != st.PID {
		return nil, fmt.Errorf("invalid exec launcher state: pgid %d differs from pid %d, but the launcher makes each runner the leader of its own process group; pass the state returned by StartTask or ListTasks", st.PGID, st.PID)
	}
	// StopTask removes the output files, so accept only paths that the
	// launcher could have created.
	if err := checkOutputPath(st.StdoutPath, stdoutSuffix); err != nil {
		return nil, fmt.Errorf("invalid exec launcher state: stdout_path: %w; pass the state returned by StartTask or ListTasks", err)
	}
	if err := checkOutputPath(st.StderrPath, stderrSuffix); err != nil {
		return nil, fmt.Errorf("invalid exec launcher state: stderr_path: %w; pass the state returned by StartTask or ListTasks", err)
	}
	return &st, nil
}

func (st *taskState) encode() []byte {
	b, err := json.Marshal(st)
	if err != nil {
		// A struct of strings and integers always encodes.
		panic(fmt.Sprintf("encode exec launcher state: %v", err))
	}
	return b
}

// procStat holds the fields of /proc/PID/stat that the launcher reads.
type procStat struct {
	state     byte
	pgrp      int
	startTime uint64
}

// live reports whether the process still runs: it is neither a zombie
// nor dead.
func (s procStat) live() bool {
	return s.state != 'Z' && s.state != 'X' && s.state != 'x'
}

// readProcStat reads /proc/PID/stat. The error wraps fs.ErrNotExist when the
// process does not exist.
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(b)
}

// parseProcStat parses the contents of /proc/PID/stat, described in proc(5).
// The second field is the command name in parentheses, which can itself
// contain spaces and parentheses, so the fields after it are counted from
// the last ')'.
func parseProcStat(b []byte) (procStat, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return procStat{}, fmt.Errorf("parse /proc stat: no ')' after the command name in %q", b)
	}
	// fields[0] is field 3 (state), so field N is fields[N-3].
	fields := strings.Fields(string(b[end+1:]))
	if len(fields) < 20 {
		return procStat{}, fmt.Errorf("parse /proc stat: %d fields after the command name, expected at least 20", len(fields))
	}
	if len(fields[0]) != 1 {
		return procStat{}, fmt.Errorf("parse /proc stat: invalid state %q", fields[0])
	}
	pgrp, err := strconv.Atoi(fields[5-3])
	if err != nil {
		return procStat{}, fmt.Errorf("parse /proc stat: invalid pgrp: %w", err)
	}
	start, err := strconv.ParseUint(fields[22-3], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parse /proc stat: invalid starttime: %w", err)
	}
	return procStat{state: fields[0][0], pgrp: pgrp, startTime: start}, nil
}

func readBootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// processPIDs returns the PIDs listed in /proc.
func processPIDs() ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	pids := make([]int, 0, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// leaderLive reports whether the process that st names is still running:
// its PID exists with the recorded start time and it is not a zombie.
func (l *Launcher) leaderLive(st *taskState) bool {
	if l.otherBoot(st) {
		return false
	}
	ps, err := readProcStat(st.PID)
	return err == nil && ps.startTime == st.StartTime && ps.live()
}

// leaderExists is like leaderLive but also counts a zombie, which has exited
// and waits to be reaped.
func (l *Launcher) leaderExists(st *taskState) bool {
	if l.otherBoot(st) {
		return false
	}
	ps, err := readProcStat(st.PID)
	return err == nil && ps.startTime == st.StartTime
}

func (l *Launcher) otherBoot(st *taskState) bool {
	return st.BootID != "" && l.bootID != "" && st.BootID != l.bootID
}

// groupLive reports whether any process of the task's process group still
// runs.
func (l *Launcher) groupLive(st *taskState) bool {
	if l.otherBoot(st) {
		return false
	}
	ps, err := readProcStat(st.PID)
	if err == nil && ps.startTime != st.StartTime {
		// The PID, and with it the group ID, now belongs to another
		// process, so group st.PGID is no longer the task's.
		return false
	}
	if err == nil && ps.live() {
		return true
	}
	// The leader has exited. A group ID stays reserved while any member
	// exists, so the members still found are the task's own processes.
	// NOTE: if the group empties and a new process reuses the PID and
	// makes itself a group leader between this scan and a signal, that
	// signal reaches the new group. This needs a PID wrap-around within
	// that window.
	pids, err := processPIDs()
	if err != nil {
		return false
	}
	for _, pid := range pids {
		ps, err := readProcStat(pid)
		if err == nil && ps.pgrp == st.PGID && ps.live() {
			return true
		}
	}
	return false
}

// environRetries and environRetryDelay bound the reads of an empty
// /proc/PID/environ. The file reads empty while the process is in
// execve(2), after the old environment is gone and before the new one is
// in place.
const (
	environRetries    = 3
	environRetryDelay = 2 * time.Millisecond
)

// readEnviron returns the value of the variable key in the initial
// environment of process pid.
func readEnviron(pid int, key string) (string, bool, error) {
	path := "/proc/" + strconv.Itoa(pid) + "/environ"
	b, err := os.ReadFile(path)
	for i := 0; err == nil && len(b) == 0 && i < environRetries; i++ {
		time.Sleep(environRetryDelay)
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return "", false, err
	}
	prefix := []byte(key + "=")
	for entry := range bytes.SplitSeq(b, []byte{0}) {
		if value, ok := bytes.CutPrefix(entry, prefix); ok {
			return string(value), true, nil
		}
	}
	return "", false, nil
}
