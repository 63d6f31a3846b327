package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc identifies a process the lab started. The start time (clock ticks
// since boot, /proc/PID/stat field 22) guards against pid reuse: after a crash
// or reboot of the lab a recorded pid is only signalled while it still names
// the very process the lab started.
type Proc struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime"`
	Log       string `json:"log,omitempty"`
}

// procStartTime reads field 22 of /proc/PID/stat.
func procStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces and parentheses: parse
	// from the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(data[i+1:]))
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

func procState(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return ""
	}
	return string(data[i+2])
}

// Alive reports whether the recorded process still runs (zombies count as dead).
func (p Proc) Alive() bool {
	if p.PID <= 0 {
		return false
	}
	st, err := procStartTime(p.PID)
	if err != nil || st != p.StartTime {
		return false
	}
	if procState(p.PID) != "Z" {
		return true
	}
	// A killed multi-threaded process shows its leader as a zombie while
	// the other threads are still exiting, and its descriptors (a TUN
	// the next daemon wants: EBUSY) close only with the last of them.
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.PID))
	return err == nil && len(tasks) > 1
}

// startDetached starts argv in its own session with stdin from /dev/null and
// stdout+stderr appended to logPath. The lab CLI exits after `up`, so its
// daemons must not depend on it; the caller records the returned Proc.
func startDetached(argv []string, logPath string, env []string) (Proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return Proc{}, fmt.Errorf("open log %s: %w", logPath, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "==== %s start: %s\n", time.Now().Format(time.RFC3339), strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	CloseInheritedOnExec()
	if err := cmd.Start(); err != nil {
		return Proc{}, fmt.Errorf("start %s: %w", argv[0], err)
	}
	pid := cmd.Process.Pid
	st, err := procStartTime(pid)
	if err != nil {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
		return Proc{}, fmt.Errorf("read start time of %s (pid %d): %w", argv[0], pid, err)
	}
	// Reap it whenever it exits so a dead daemon never lingers as a zombie
	// in a long-lived caller (the e2e test binary); in the short-lived CLI
	// the goroutine simply dies with the process.
	go func() { _, _ = cmd.Process.Wait() }()
	return Proc{PID: pid, StartTime: st, Log: logPath}, nil
}

// CloseInheritedOnExec marks every descriptor this process inherited (all
// above stderr) close-on-exec. os/exec passes such descriptors on to
// children, and a lab daemon outlives the command that started it: a lock
// fd from `flock LOCK go test ...` kept a left-up lab holding the test lock
// for an hour. Descriptors Go opened itself are close-on-exec already. The
// lab suites call it too, for processes their tests start themselves.
func CloseInheritedOnExec() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}

// errStillRunning is returned when a process survives SIGKILL (e.g. stuck in
// uninterruptible sleep) for longer than the wait.
var errStillRunning = errors.New("process still running")

// stop signals the process (sig, then SIGKILL after grace) and waits until it
// is gone. A process that is no longer the recorded one is left alone.
func (p Proc) stop(sig syscall.Signal, grace time.Duration) error {
	if !p.Alive() {
		return nil
	}
	_ = syscall.Kill(p.PID, sig)
	if waitGone(p, grace) {
		return nil
	}
	_ = syscall.Kill(p.PID, syscall.SIGKILL)
	if waitGone(p, 10*time.Second) {
		return nil
	}
	return fmt.Errorf("pid %d: %w", p.PID, errStillRunning)
}

func waitGone(p Proc, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		// Reap it if it is our child (the CLI's `down` is not its parent,
		// the e2e binary may be); ignore errors for non-children.
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(p.PID, &ws, syscall.WNOHANG, nil)
		if !p.Alive() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
