package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type recordingSink struct {
	mu    sync.Mutex
	lines []string
	warns []string
}

func (s *recordingSink) Line(stream, line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lines = append(s.lines, stream+": "+line)
}

func (s *recordingSink) Warn(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.warns = append(s.warns, msg)
}

func newTestProvider(t *testing.T) *cmdProvider {
	p := newProvider(nil)
	t.Cleanup(p.shutdown)
	return p
}

func strp(s string) *string { return &s }

func TestSSHRunEnvStdinAndOutputs(t *testing.T) {
	s := startSSHD(t)
	p := newTestProvider(t)
	sink := &recordingSink{}
	spec := &commandSpec{
		Conn:                   s.conn(),
		Environment:            map[string]string{"PDSTACK_A": "alpha", "PDSTACK_B": "b e t a"},
		Stdin:                  strp("from-stdin\n"),
		Logging:                logStdout,
		AddPreviousOutputInEnv: true,
	}
	cmd := `echo "$PDSTACK_A/$PDSTACK_B"; read x; echo "got:$x"; echo "prev:$PULUMI_COMMAND_STDOUT"; echo oops >&2`
	out, errOut, err := p.runRemote(context.Background(), spec, cmd, false, &prevOutputs{Stdout: "old-out"}, sink)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, s.logText())
	}
	if want := "alpha/b e t a\ngot:from-stdin\nprev:old-out"; out != want {
		t.Fatalf("stdout = %q, want %q (one trailing newline trimmed)", out, want)
	}
	if errOut != "oops" {
		t.Fatalf("stderr = %q", errOut)
	}
	// logging=stdout: stdout lines are streamed, stderr is not.
	if len(sink.lines) != 3 || sink.lines[0] != "stdout: alpha/b e t a" {
		t.Fatalf("streamed lines = %q", sink.lines)
	}
	if len(sink.warns) != 0 {
		t.Fatalf("unexpected warnings %q", sink.warns)
	}
}

func TestSSHEnvironmentRejectedByAcceptEnv(t *testing.T) {
	s := startSSHD(t)
	p := newTestProvider(t)
	spec := &commandSpec{Conn: s.conn(), Environment: map[string]string{"NOT_ACCEPTED": "x"}, Logging: logNone}
	_, _, err := p.runRemote(context.Background(), spec, "true", false, nil, nopSink{})
	if err == nil || !strings.Contains(err.Error(), "AcceptEnv") || !strings.Contains(err.Error(), "NOT_ACCEPTED") {
		t.Fatalf("want an AcceptEnv error naming the variable, got %v", err)
	}
}

func TestSSHNonZeroExit(t *testing.T) {
	s := startSSHD(t)
	p := newTestProvider(t)
	spec := &commandSpec{Conn: s.conn(), Logging: logNone}
	out, _, err := p.runRemote(context.Background(), spec,
		"for i in $(seq 1 100); do echo line$i; done; echo bad >&2; exit 3", false, nil, nopSink{})
	var ce *commandError
	if !errors.As(err, &ce) {
		t.Fatalf("want a commandError, got %v", err)
	}
	msg := err.Error()
	for _, want := range []string{"status 3", "line100", "bad", "127.0.0.1", `running "for i in`} {
		if !strings.Contains(msg, want) {
			t.Fatalf("error message lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "line1\n") {
		t.Fatalf("error message should only quote the tail:\n%s", msg)
	}
	if !strings.HasPrefix(out, "line1\n") {
		t.Fatalf("stdout must still be captured in full")
	}
	// A secret command is not echoed.
	_, _, err = p.runRemote(context.Background(), spec, "echo TOPSECRET >/dev/null; exit 1", true, nil, nopSink{})
	if err == nil || strings.Contains(err.Error(), "TOPSECRET") || !strings.Contains(err.Error(), "[secret command]") {
		t.Fatalf("secret command leaked or wrong error: %v", err)
	}
}

func TestSSHHostKeyVerification(t *testing.T) {
	s := startSSHD(t)
	p := newTestProvider(t)
	var dials atomic.Int32
	p.pool.dialHook = func(string) { dials.Add(1) }

	good := s.conn()
	good.HostKey = s.HostPublicKey + " comment"
	out, _, err := p.runRemote(context.Background(), &commandSpec{Conn: good, Logging: logNone}, "echo ok", false, nil, nopSink{})
	if err != nil || out != "ok" {
		t.Fatalf("matching host key: out=%q err=%v", out, err)
	}

	_, _, otherPub := genKey(t)
	bad := s.conn()
	bad.HostKey = otherPub
	bad.DialErrorLimit = 5
	dials.Store(0)
	start := time.Now()
	_, _, err = p.runRemote(context.Background(), &commandSpec{Conn: bad, Logging: logNone}, "echo ok", false, nil, nopSink{})
	if err == nil {
		t.Fatal("a wrong host key must fail")
	}
	msg := err.Error()
	if !strings.Contains(msg, "host key verification failed") || !strings.Contains(msg, fmt.Sprintf("127.0.0.1:%d", s.Port)) {
		t.Fatalf("error must name the host and the failure: %v", msg)
	}
	if n := dials.Load(); n != 1 || time.Since(start) > 3*time.Second {
		t.Fatalf("a host key mismatch must not be retried (dials=%d, took %v)", n, time.Since(start))
	}
}

func TestSSHDialRetryLimit(t *testing.T) {
	p := newTestProvider(t)
	var dials atomic.Int32
	p.pool.dialHook = func(string) { dials.Add(1) }
	_, clientPEM, _ := genKey(t)
	c := &connSpec{Host: "127.0.0.1", Port: freePort(t), User: "root", PrivateKey: clientPEM,
		DialErrorLimit: 2, PerDialTimeout: 1}
	_, _, err := p.runRemote(context.Background(), &commandSpec{Conn: c, Logging: logNone}, "true", false, nil, nopSink{})
	if err == nil || !strings.Contains(err.Error(), "after 2 attempt(s)") {
		t.Fatalf("want failure after 2 attempts, got %v", err)
	}
	if dials.Load() != 2 {
		t.Fatalf("dials = %d, want 2", dials.Load())
	}
	// The context deadline bounds an unlimited retry loop.
	c.DialErrorLimit = -1
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err = p.runRemote(ctx, &commandSpec{Conn: c, Logging: logNone}, "true", false, nil, nopSink{})
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 4*time.Second {
		t.Fatalf("want a deadline error quickly, got %v after %v", err, time.Since(start))
	}
}

func TestSSHAuthFailureIsClear(t *testing.T) {
	s := startSSHD(t)
	p := newTestProvider(t)
	_, otherPEM, _ := genKey(t)
	c := s.conn()
	c.PrivateKey = otherPEM
	c.DialErrorLimit = 1
	_, _, err := p.runRemote(context.Background(), &commandSpec{Conn: c, Logging: logNone}, "true", false, nil, nopSink{})
	if err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Fatalf("want an authentication error, got %v", err)
	}
	if strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Fatal("error leaks key material")
	}
}

// Many parallel commands share a few connections; more sessions than sshd's MaxSessions are absorbed.
func TestSSHConnectionReuseAndMaxSessions(t *testing.T) {
	s := startSSHD(t, "MaxSessions 3")
	p := newTestProvider(t)
	p.pool.sessionsPerConn = 8 // more than the server allows: the pool must adapt
	var dials atomic.Int32
	p.pool.dialHook = func(string) { dials.Add(1) }
	const n = 24
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			spec := &commandSpec{Conn: s.conn(), Logging: logNone}
			out, _, err := p.runRemote(context.Background(), spec, fmt.Sprintf("sleep 0.3; echo %d", i), false, nil, nopSink{})
			if err == nil && out != fmt.Sprint(i) {
				err = fmt.Errorf("command %d: stdout %q", i, out)
			}
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("parallel run: %v\n%s", err, s.logText())
		}
	}
	if d := dials.Load(); d > int32(p.pool.maxConnsPerHost) {
		t.Fatalf("opened %d connections, want at most %d", d, p.pool.maxConnsPerHost)
	}
	stats := p.pool.stats()
	if len(stats) != 1 {
		t.Fatalf("want one pool entry, got %v", stats)
	}
	t.Logf("24 commands used %d connection(s): %v", dials.Load(), stats)

	// Sequential commands reuse the same connection.
	before := dials.Load()
	for i := 0; i < 5; i++ {
		if _, _, err := p.runRemote(context.Background(), &commandSpec{Conn: s.conn(), Logging: logNone}, "true", false, nil, nopSink{}); err != nil {
			t.Fatal(err)
		}
	}
	if dials.Load() != before {
		t.Fatalf("sequential commands dialled again (%d -> %d)", before, dials.Load())
	}

	p.pool.closeAll()
	if _, _, err := p.runRemote(context.Background(), &commandSpec{Conn: s.conn(), Logging: logNone}, "true", false, nil, nopSink{}); err == nil {
		t.Fatal("after closeAll, runs must fail")
	}
}

// With the default budget (8 sessions per connection), 16 parallel commands need only 2 connections.
func TestSSHParallelCommandsShareConnections(t *testing.T) {
	s := startSSHD(t)
	p := newTestProvider(t)
	var dials atomic.Int32
	p.pool.dialHook = func(string) { dials.Add(1) }
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := p.runRemote(context.Background(), &commandSpec{Conn: s.conn(), Logging: logNone}, "sleep 0.5", false, nil, nopSink{})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if d := dials.Load(); d > 2 {
		t.Fatalf("16 parallel commands opened %d connections, want <= 2", d)
	}
}

func TestSSHDeadConnectionIsReplaced(t *testing.T) {
	s := startSSHD(t)
	p := newTestProvider(t)
	spec := &commandSpec{Conn: s.conn(), Logging: logNone}
	if _, _, err := p.runRemote(context.Background(), spec, "true", false, nil, nopSink{}); err != nil {
		t.Fatal(err)
	}
	// Kill the server side of the pooled connection (its session process), keeping the listener alive.
	if _, _, err := p.runRemote(context.Background(), spec, "kill -9 $PPID", false, nil, nopSink{}); err == nil {
		t.Log("kill returned no error")
	}
	time.Sleep(200 * time.Millisecond)
	out, _, err := p.runRemote(context.Background(), spec, "echo again", false, nil, nopSink{})
	if err != nil || out != "again" {
		t.Fatalf("after the connection died: out=%q err=%v", out, err)
	}
}

func TestSSHContextCancelStopsCommand(t *testing.T) {
	s := startSSHD(t)
	p := newTestProvider(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, _, err := p.runRemote(ctx, &commandSpec{Conn: s.conn(), Logging: logNone}, "echo started; sleep 30", false, nil, nopSink{})
	if err == nil || time.Since(start) > 8*time.Second {
		t.Fatalf("want an abort error quickly, got %v after %v", err, time.Since(start))
	}
	if !strings.Contains(err.Error(), "started") {
		t.Fatalf("the abort error should quote the output so far: %v", err)
	}
}

func TestSSHProxy(t *testing.T) {
	s := startSSHD(t)
	p := newTestProvider(t)
	c := s.conn()
	c.Proxy = s.conn() // jump through the same server to itself
	c.HostKey = s.HostPublicKey
	out, _, err := p.runRemote(context.Background(), &commandSpec{Conn: c, Logging: logNone}, "echo via-proxy", false, nil, nopSink{})
	if err != nil || out != "via-proxy" {
		t.Fatalf("proxy: out=%q err=%v\n%s", out, err, s.logText())
	}
}
