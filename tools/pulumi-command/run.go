package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

const (
	envPrevStdout = "PULUMI_COMMAND_STDOUT"
	envPrevStderr = "PULUMI_COMMAND_STDERR"

	errorTailBytes = 4096 // how much of the output an error message quotes
	errorTailLines = 40
	maxLogLine     = 8192 // longer lines are split when streamed to the engine log
)

// logSink receives streamed output lines and warnings for one resource operation.
type logSink interface {
	Line(stream string, line string) // stream is "stdout" or "stderr"
	Warn(msg string)
}

type nopSink struct{}

func (nopSink) Line(string, string) {}
func (nopSink) Warn(string)         {}

// prevOutputs are the stdout/stderr of the previous create/update, for PULUMI_COMMAND_STDOUT/STDERR.
type prevOutputs struct {
	Stdout, Stderr string
}

// commandError is a failed command run. Its message has the exit status and the tail of the output.
type commandError struct {
	Where  string // e.g. "root@10.0.0.1:22" or "local"
	Cmd    string // "" when the command text is secret
	Status string // e.g. "exit status 3", "signal KILL"
	Tail   string
	Err    error
}

func (e *commandError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "command failed on %s: %s", e.Where, e.Status)
	if e.Cmd != "" {
		fmt.Fprintf(&b, ": running %q", e.Cmd)
	} else {
		b.WriteString(": running [secret command]")
	}
	if e.Tail != "" {
		fmt.Fprintf(&b, "\n--- output (tail) ---\n%s", e.Tail)
	} else {
		b.WriteString(" (no output)")
	}
	return b.String()
}

func (e *commandError) Unwrap() error { return e.Err }

// capture collects one stream fully, feeds a shared tail buffer and streams complete lines to the sink.
// It is safe for concurrent use: after an abort, the session's copy goroutines may still write while the
// result is read, and flush() makes later writes no-ops.
type capture struct {
	mu      sync.Mutex
	stopped bool
	name    string
	buf     bytes.Buffer
	tail    *tailBuffer
	sink    logSink
	stream  bool
	line    []byte
}

func (c *capture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return len(p), nil
	}
	c.buf.Write(p)
	c.tail.Write(p)
	if c.stream {
		for _, b := range p {
			if b == '\n' || len(c.line) >= maxLogLine {
				c.emit()
				if b == '\n' {
					continue
				}
			}
			c.line = append(c.line, b)
		}
	}
	return len(p), nil
}

func (c *capture) emit() {
	line := strings.TrimRight(string(c.line), "\r")
	c.line = c.line[:0]
	c.sink.Line(c.name, line)
}

// flush emits a last unterminated line and ignores any later output.
func (c *capture) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stream && len(c.line) > 0 && !c.stopped {
		c.emit()
	}
	c.stopped = true
}

// result returns the captured output with one trailing newline removed (like upstream).
func (c *capture) result() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.TrimSuffix(c.buf.String(), "\n")
}

// tailBuffer keeps the last bytes written by both streams, interleaved in arrival order.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailBuffer) Write(p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*errorTailBytes {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-errorTailBytes:]...)
	}
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	if len(b) > errorTailBytes {
		b = b[len(b)-errorTailBytes:]
	}
	s := strings.TrimRight(string(b), "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > errorTailLines {
		lines = lines[len(lines)-errorTailLines:]
	}
	return strings.Join(lines, "\n")
}

func newCaptures(logging string, sink logSink) (*capture, *capture, *tailBuffer) {
	tail := &tailBuffer{}
	out := &capture{name: "stdout", tail: tail, sink: sink,
		stream: logging == logStdout || logging == logStdoutAndStderr}
	errc := &capture{name: "stderr", tail: tail, sink: sink,
		stream: logging == logStderr || logging == logStdoutAndStderr}
	return out, errc, tail
}

// runRemote runs cmd in one SSH session on spec.Conn.
func (p *cmdProvider) runRemote(ctx context.Context, spec *commandSpec, cmd string, cmdSecret bool,
	prev *prevOutputs, sink logSink,
) (string, string, error) {
	c := spec.Conn
	where := c.User + "@" + c.addr()
	session, l, err := p.openSession(ctx, c)
	if err != nil {
		return "", "", err
	}
	broken := false
	defer func() {
		_ = session.Close()
		l.closed()
		l.release(broken)
	}()

	for _, k := range spec.envKeys() {
		if err := session.Setenv(k, spec.Environment[k]); err != nil {
			return "", "", fmt.Errorf("could not set environment variable %s on %s: %w; the SSH server must "+
				"accept it (sshd_config AcceptEnv), or prefix the command with '%s=value'", k, where, err, k)
		}
	}
	if prev != nil && spec.AddPreviousOutputInEnv {
		errOut := session.Setenv(envPrevStdout, prev.Stdout)
		errErr := session.Setenv(envPrevStderr, prev.Stderr)
		if errOut != nil || errErr != nil {
			sink.Warn(fmt.Sprintf("could not set %s/%s on %s (sshd_config AcceptEnv does not allow them); set "+
				"addPreviousOutputInEnv=false to silence this warning", envPrevStdout, envPrevStderr, where))
		}
	}
	if spec.Stdin != nil && *spec.Stdin != "" {
		session.Stdin = strings.NewReader(*spec.Stdin)
	}
	stdout, stderr, tail := newCaptures(spec.Logging, sink)
	session.Stdout = stdout
	session.Stderr = stderr

	if err := session.Start(cmd); err != nil {
		broken = isConnError(err)
		return "", "", fmt.Errorf("starting the command on %s: %w", where, err)
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- session.Wait() }()
	select {
	case err = <-waitErr:
	case <-ctx.Done():
		_ = session.Signal(ssh.SIGKILL)
		_ = session.Close()
		// The channel closes only once every remote process holding its output has exited; do not wait long
		// for that (an orphaned background process would keep it open).
		select {
		case <-waitErr:
		case <-time.After(time.Second):
		}
		stdout.flush()
		stderr.flush()
		return stdout.result(), stderr.result(), &commandError{Where: where, Cmd: shownCmd(cmd, cmdSecret),
			Status: abortStatus(ctx), Tail: tail.String(), Err: ctx.Err()}
	}
	stdout.flush()
	stderr.flush()
	if err != nil {
		status := err.Error()
		var exitErr *ssh.ExitError
		var missing *ssh.ExitMissingError
		switch {
		case errors.As(err, &exitErr):
			if exitErr.Signal() != "" {
				status = "killed by signal " + exitErr.Signal()
			} else {
				status = fmt.Sprintf("Process exited with status %d", exitErr.ExitStatus())
			}
		case errors.As(err, &missing):
			status = "the remote command exited without an exit status (connection lost?)"
			broken = true
		default:
			broken = isConnError(err)
		}
		return stdout.result(), stderr.result(), &commandError{Where: where, Cmd: shownCmd(cmd, cmdSecret),
			Status: status, Tail: tail.String(), Err: err}
	}
	return stdout.result(), stderr.result(), nil
}

// openSession acquires a pooled connection and opens a session on it. When the server refuses the session
// (OpenSSH answers "open failed" once MaxSessions is reached) the connection's session budget shrinks to what
// the server accepted, and we wait for a slot or another connection. A dead connection is discarded.
func (p *cmdProvider) openSession(ctx context.Context, c *connSpec) (*ssh.Session, *lease, error) {
	var lastErr error
	failures := 0
	for tries := 0; tries < 200 && failures < 4; tries++ {
		l, err := p.pool.acquire(ctx, c)
		if err != nil {
			return nil, nil, err
		}
		s, err := l.Client.NewSession()
		if err == nil {
			l.opened()
			return s, l, nil
		}
		lastErr = err
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) {
			if l.refused() {
				l.release(false)
				select {
				case <-ctx.Done():
					return nil, nil, ctx.Err()
				case <-time.After(50 * time.Millisecond):
				}
				continue
			}
			failures++
			l.release(false)
			continue
		}
		failures++
		l.release(true)
	}
	return nil, nil, fmt.Errorf("opening an SSH session on %s@%s: %w", c.User, c.addr(), lastErr)
}

func isConnError(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		strings.Contains(err.Error(), "use of closed network connection")
}

func abortStatus(ctx context.Context) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return "aborted: the operation exceeded its timeout (customTimeouts)"
	}
	return "aborted: the operation was cancelled"
}

func shownCmd(cmd string, secret bool) string {
	if secret {
		return ""
	}
	return cmd
}

// runLocal runs cmd on the provider's machine (command:local:Command).
func runLocal(ctx context.Context, spec *commandSpec, cmd string, cmdSecret bool, prev *prevOutputs,
	sink logSink,
) (string, string, error) {
	interp := spec.Interpreter
	if len(interp) == 0 {
		interp = []string{"/bin/sh", "-c"}
	}
	args := append(append([]string{}, interp[1:]...), cmd)
	c := exec.CommandContext(ctx, interp[0], args...)
	c.Dir = spec.Dir
	c.Env = os.Environ()
	for _, k := range spec.envKeys() {
		c.Env = append(c.Env, k+"="+spec.Environment[k])
	}
	if prev != nil && spec.AddPreviousOutputInEnv {
		c.Env = append(c.Env, envPrevStdout+"="+prev.Stdout, envPrevStderr+"="+prev.Stderr)
	}
	if spec.Stdin != nil && *spec.Stdin != "" {
		c.Stdin = strings.NewReader(*spec.Stdin)
	}
	stdout, stderr, tail := newCaptures(spec.Logging, sink)
	c.Stdout = stdout
	c.Stderr = stderr
	c.WaitDelay = 5 * time.Second
	err := c.Run()
	stdout.flush()
	stderr.flush()
	if err != nil {
		status := err.Error()
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) && exitErr.ExitCode() >= 0 {
			status = fmt.Sprintf("Process exited with status %d", exitErr.ExitCode())
		}
		if ctx.Err() != nil {
			status = abortStatus(ctx)
		}
		return stdout.result(), stderr.result(), &commandError{Where: "local", Cmd: shownCmd(cmd, cmdSecret),
			Status: status, Tail: tail.String(), Err: err}
	}
	return stdout.result(), stderr.result(), nil
}
