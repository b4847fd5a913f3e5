package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// Pool limits. OpenSSH's default MaxSessions is 10 and MaxStartups starts dropping unauthenticated connections
// beyond 10, so we multiplex up to sessionsPerConn sessions over each connection, open at most maxConnsPerHost
// connections per (host, port, user, credentials), and never run two handshakes to the same target at once.
const (
	defaultSessionsPerConn = 8
	defaultMaxConnsPerHost = 4
	idleCheckAfter         = 20 * time.Second // probe an idle connection before reusing it
	keepaliveTimeout       = 10 * time.Second
	maxDialBackoff         = 5 * time.Second
)

// hostKeyMismatchError is returned when the server's host key differs from connection.hostKey. It is never
// retried.
type hostKeyMismatchError struct {
	Addr     string
	Expected ssh.PublicKey
	Got      ssh.PublicKey
}

func (e *hostKeyMismatchError) Error() string {
	return fmt.Sprintf("host key verification failed for %s: the server presented %s %s, but connection.hostKey "+
		"expects %s %s (possible man-in-the-middle attack, or the host was reinstalled)",
		e.Addr, e.Got.Type(), ssh.FingerprintSHA256(e.Got), e.Expected.Type(), ssh.FingerprintSHA256(e.Expected))
}

// permanentError marks a configuration error that retrying cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func isPermanent(err error) bool {
	var hk *hostKeyMismatchError
	var pe *permanentError
	return errors.As(err, &hk) || errors.As(err, &pe)
}

// sshPool shares SSH connections between the commands of one provider process.
type sshPool struct {
	sessionsPerConn int
	maxConnsPerHost int

	mu     sync.Mutex
	hosts  map[string]*hostPool
	closed bool

	// dialHook, when set (tests), is called before every dial attempt.
	dialHook func(addr string)
}

func newSSHPool() *sshPool {
	p := &sshPool{
		sessionsPerConn: defaultSessionsPerConn,
		maxConnsPerHost: defaultMaxConnsPerHost,
		hosts:           map[string]*hostPool{},
	}
	if n, err := strconv.Atoi(os.Getenv("PDSTACK_SSH_SESSIONS_PER_CONN")); err == nil && n > 0 {
		p.sessionsPerConn = n
	}
	if n, err := strconv.Atoi(os.Getenv("PDSTACK_SSH_MAX_CONNS_PER_HOST")); err == nil && n > 0 {
		p.maxConnsPerHost = n
	}
	return p
}

// hostPool holds the connections for one pool key.
type hostPool struct {
	key     string
	mu      sync.Mutex
	clients []*pooledClient
	dialing *dialAttempt  // the dial in progress, if any
	changed chan struct{} // closed (and replaced) whenever a slot frees or a dial finishes
}

type dialAttempt struct {
	done chan struct{}
	err  error
}

// pooledClient is one SSH connection with a session budget.
type pooledClient struct {
	client   *ssh.Client
	closers  []func() // closes the connection and, for proxied connections, the proxy connection
	inUse    int      // leases handed out
	open     int      // sessions currently open on the server
	limit    int
	broken   bool
	lastUsed time.Time
}

func (c *pooledClient) close() {
	for _, f := range c.closers {
		f()
	}
}

// poolKey identifies a connection target and its credentials. Secrets are hashed, never stored as keys.
func poolKey(c *connSpec) string {
	h := sha256.New()
	var write func(c *connSpec)
	write = func(c *connSpec) {
		for _, s := range []string{c.Host, strconv.Itoa(c.Port), c.User, c.Password, c.PrivateKey,
			c.PrivateKeyPassword, c.AgentSocketPath, c.HostKey} {
			h.Write([]byte(strconv.Itoa(len(s))))
			h.Write([]byte{':'})
			h.Write([]byte(s))
		}
		if c.Proxy != nil {
			h.Write([]byte("proxy{"))
			write(c.Proxy)
			h.Write([]byte("}"))
		}
	}
	write(c)
	return c.User + "@" + c.addr() + "#" + hex.EncodeToString(h.Sum(nil))[:16]
}

func (p *sshPool) hostPoolFor(c *connSpec) (*hostPool, error) {
	key := poolKey(c)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("the provider is shutting down")
	}
	hp := p.hosts[key]
	if hp == nil {
		hp = &hostPool{key: key, changed: make(chan struct{})}
		p.hosts[key] = hp
	}
	return hp, nil
}

// notify wakes everyone waiting on hp. Caller holds hp.mu.
func (hp *hostPool) notify() {
	close(hp.changed)
	hp.changed = make(chan struct{})
}

// lease is one session slot on a pooled connection.
type lease struct {
	hp     *hostPool
	pc     *pooledClient
	once   sync.Once
	Client *ssh.Client
}

// release returns the slot. If broken is set the connection is discarded.
func (l *lease) release(broken bool) {
	l.once.Do(func() {
		l.hp.mu.Lock()
		defer l.hp.mu.Unlock()
		l.pc.inUse--
		l.pc.lastUsed = time.Now()
		if broken {
			l.pc.broken = true
		}
		if l.pc.broken && l.pc.inUse == 0 {
			l.hp.remove(l.pc)
		}
		l.hp.notify()
	})
}

// opened records a session that the server accepted.
func (l *lease) opened() {
	l.hp.mu.Lock()
	defer l.hp.mu.Unlock()
	l.pc.open++
}

// closed records the end of a session opened with opened.
func (l *lease) closed() {
	l.hp.mu.Lock()
	defer l.hp.mu.Unlock()
	l.pc.open--
}

// refused records that the server refused a session while others were open on the connection, and lowers
// the connection's budget to the number it accepted. It returns false when no other session was open (the
// refusal is then not a session limit).
func (l *lease) refused() bool {
	l.hp.mu.Lock()
	defer l.hp.mu.Unlock()
	if l.pc.open == 0 {
		return false
	}
	l.pc.limit = max(1, min(l.pc.limit, l.pc.open))
	return true
}

// remove drops pc from the pool and closes it. Caller holds hp.mu.
func (hp *hostPool) remove(pc *pooledClient) {
	for i, c := range hp.clients {
		if c == pc {
			hp.clients = append(hp.clients[:i], hp.clients[i+1:]...)
			go pc.close()
			return
		}
	}
}

// acquire returns a session slot on a live connection to c, dialling a new connection when every existing one
// is full (up to maxConnsPerHost).
func (p *sshPool) acquire(ctx context.Context, c *connSpec) (*lease, error) {
	hp, err := p.hostPoolFor(c)
	if err != nil {
		return nil, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		hp.mu.Lock()
		// Pick the least-loaded live connection with a free slot.
		var best *pooledClient
		live := 0
		for _, pc := range hp.clients {
			if pc.broken {
				continue
			}
			live++
			if pc.inUse < pc.limit && (best == nil || pc.inUse < best.inUse) {
				best = pc
			}
		}
		if best != nil {
			best.inUse++
			idle := best.inUse == 1 && time.Since(best.lastUsed) > idleCheckAfter
			hp.mu.Unlock()
			l := &lease{hp: hp, pc: best, Client: best.client}
			if idle && !probe(best.client) {
				l.release(true)
				continue
			}
			return l, nil
		}
		if hp.dialing == nil && live < p.maxConnsPerHost {
			att := &dialAttempt{done: make(chan struct{})}
			hp.dialing = att
			hp.mu.Unlock()

			pc, err := p.dialWithRetry(ctx, c)

			hp.mu.Lock()
			hp.dialing = nil
			att.err = err
			close(att.done)
			var l *lease
			if err == nil {
				pc.inUse = 1
				pc.limit = p.sessionsPerConn
				pc.lastUsed = time.Now()
				p.mu.Lock()
				closed := p.closed
				p.mu.Unlock()
				if closed {
					hp.mu.Unlock()
					pc.close()
					return nil, errors.New("the provider is shutting down")
				}
				hp.clients = append(hp.clients, pc)
				watchClient(hp, pc)
				l = &lease{hp: hp, pc: pc, Client: pc.client}
			}
			hp.notify()
			hp.mu.Unlock()
			if err != nil {
				return nil, err
			}
			return l, nil
		}
		// Wait for a slot to free up or a dial to finish.
		changed := hp.changed
		att := hp.dialing
		hp.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		}
		if att != nil {
			select {
			case <-att.done:
				if att.err != nil {
					// Everyone waiting on a failed dial fails with it (each would retry the same way).
					return nil, att.err
				}
			default:
			}
		}
	}
}

// watchClient marks pc broken when its connection ends.
func watchClient(hp *hostPool, pc *pooledClient) {
	go func() {
		_ = pc.client.Wait()
		hp.mu.Lock()
		defer hp.mu.Unlock()
		pc.broken = true
		if pc.inUse == 0 {
			hp.remove(pc)
		}
		hp.notify()
	}()
}

// probe checks that an idle connection still answers.
func probe(c *ssh.Client) bool {
	res := make(chan error, 1)
	go func() {
		_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
		res <- err
	}()
	select {
	case err := <-res:
		return err == nil
	case <-time.After(keepaliveTimeout):
		return false
	}
}

// closeAll closes every pooled connection; later acquires fail.
func (p *sshPool) closeAll() {
	p.mu.Lock()
	p.closed = true
	hosts := p.hosts
	p.hosts = map[string]*hostPool{}
	p.mu.Unlock()
	for _, hp := range hosts {
		hp.mu.Lock()
		clients := hp.clients
		hp.clients = nil
		hp.notify()
		hp.mu.Unlock()
		for _, pc := range clients {
			pc.close()
		}
	}
}

// stats returns the number of live connections per pool key (tests and debug logging).
func (p *sshPool) stats() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for k, hp := range p.hosts {
		hp.mu.Lock()
		n := 0
		for _, pc := range hp.clients {
			if !pc.broken {
				n++
			}
		}
		hp.mu.Unlock()
		out[k] = n
	}
	return out
}

// dialWithRetry dials c, retrying up to c.DialErrorLimit errors (-1: until ctx ends), each attempt bounded by
// c.PerDialTimeout. Host key mismatches and configuration errors are not retried.
func (p *sshPool) dialWithRetry(ctx context.Context, c *connSpec) (*pooledClient, error) {
	limit := c.DialErrorLimit
	errorsSeen := 0
	for {
		pc, err := p.dialOnce(ctx, c)
		if err == nil {
			return pc, nil
		}
		errorsSeen++
		if isPermanent(err) {
			return nil, err
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("dialing %s@%s: %w (after %d attempt(s); last error: %v)",
				c.User, c.addr(), ctxErr, errorsSeen, err)
		}
		if limit >= 0 && errorsSeen >= max(limit, 1) {
			return nil, fmt.Errorf("unable to connect to %s@%s after %d attempt(s) (connection.dialErrorLimit=%d): %w",
				c.User, c.addr(), errorsSeen, limit, err)
		}
		backoff := min(time.Duration(errorsSeen)*time.Second, maxDialBackoff)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dialing %s@%s: %w (after %d attempt(s); last error: %v)",
				c.User, c.addr(), ctx.Err(), errorsSeen, err)
		case <-time.After(backoff):
		}
	}
}

// dialOnce makes one connection attempt (through c.Proxy when set).
func (p *sshPool) dialOnce(ctx context.Context, c *connSpec) (*pooledClient, error) {
	if p.dialHook != nil {
		p.dialHook(c.addr())
	}
	var closers []func()
	var proxy *ssh.Client
	if c.Proxy != nil {
		pp, err := p.dialWithRetry(ctx, c.Proxy)
		if err != nil {
			return nil, fmt.Errorf("connecting to proxy %s: %w", c.Proxy.addr(), err)
		}
		proxy = pp.client
		closers = append(closers, pp.close)
	}
	client, err := dialSSH(ctx, c, proxy)
	if err != nil {
		for _, f := range closers {
			f()
		}
		return nil, err
	}
	closers = append([]func(){func() { _ = client.Close() }}, closers...)
	return &pooledClient{client: client, closers: closers}, nil
}

// dialSSH opens and authenticates one SSH connection, with the handshake bounded by c.PerDialTimeout.
func dialSSH(ctx context.Context, c *connSpec, via *ssh.Client) (*ssh.Client, error) {
	auths, cleanup, err := authMethods(c)
	if err != nil {
		return nil, err
	}
	defer cleanup()

	addr := c.addr()
	var mismatch *hostKeyMismatchError
	cfg := &ssh.ClientConfig{User: c.User, Auth: auths}
	if c.HostKey == "" {
		cfg.HostKeyCallback = ssh.InsecureIgnoreHostKey()
	} else {
		want, err := parseHostKey(c.HostKey)
		if err != nil {
			return nil, &permanentError{err}
		}
		cfg.HostKeyAlgorithms = hostKeyAlgorithms(want)
		cfg.HostKeyCallback = func(_ string, _ net.Addr, got ssh.PublicKey) error {
			if bytes.Equal(got.Marshal(), want.Marshal()) {
				return nil
			}
			mismatch = &hostKeyMismatchError{Addr: addr, Expected: want, Got: got}
			return mismatch
		}
	}

	attemptCtx := ctx
	if c.PerDialTimeout > 0 {
		var cancel context.CancelFunc
		attemptCtx, cancel = context.WithTimeout(ctx, time.Duration(c.PerDialTimeout)*time.Second)
		defer cancel()
	}

	var conn net.Conn
	if via != nil {
		conn, err = via.DialContext(attemptCtx, "tcp", addr)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(attemptCtx, "tcp", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("dial tcp %s: %w", addr, err)
	}

	type result struct {
		c     ssh.Conn
		chans <-chan ssh.NewChannel
		reqs  <-chan *ssh.Request
		err   error
	}
	done := make(chan result, 1)
	go func() {
		sc, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
		done <- result{sc, chans, reqs, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			_ = conn.Close()
			if mismatch != nil {
				return nil, mismatch
			}
			return nil, r.err
		}
		return ssh.NewClient(r.c, r.chans, r.reqs), nil
	case <-attemptCtx.Done():
		_ = conn.Close()
		r := <-done
		if r.err == nil {
			_ = r.c.Close()
		}
		return nil, fmt.Errorf("ssh handshake with %s: %w", addr, attemptCtx.Err())
	}
}

// hostKeyAlgorithms restricts negotiation to the algorithms of the expected key, so that a server with several
// host keys presents the one we can verify.
func hostKeyAlgorithms(k ssh.PublicKey) []string {
	switch k.Type() {
	case ssh.KeyAlgoRSA:
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	default:
		return []string{k.Type()}
	}
}

// authMethods builds the client auth methods: the private key first, then an SSH agent, then the password
// (also answering keyboard-interactive prompts). The returned cleanup closes the agent connection.
func authMethods(c *connSpec) ([]ssh.AuthMethod, func(), error) {
	var methods []ssh.AuthMethod
	cleanup := func() {}
	if c.PrivateKey != "" {
		signer, err := parsePrivateKey(c.PrivateKey, c.PrivateKeyPassword)
		if err != nil {
			return nil, cleanup, &permanentError{fmt.Errorf("connection to %s: %w", c.addr(), err)}
		}
		methods = append(methods, ssh.PublicKeys(signer))
	}
	sock, explicit := c.AgentSocketPath, c.AgentSocketPath != ""
	if !explicit {
		sock = os.Getenv("SSH_AUTH_SOCK")
	}
	if sock != "" {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			if explicit {
				return nil, cleanup, fmt.Errorf("connecting to the SSH agent at connection.agentSocketPath: %w", err)
			}
		} else {
			cleanup = func() { _ = conn.Close() }
			methods = append(methods, ssh.PublicKeysCallback(agent.NewClient(conn).Signers))
		}
	}
	if c.Password != "" {
		pw := c.Password
		methods = append(methods, ssh.Password(pw),
			ssh.KeyboardInteractive(func(_, _ string, questions []string, _ []bool) ([]string, error) {
				answers := make([]string, len(questions))
				for i := range answers {
					answers[i] = pw
				}
				return answers, nil
			}))
	}
	if len(methods) == 0 {
		return nil, cleanup, &permanentError{fmt.Errorf("connection to %s: no authentication method: set "+
			"connection.privateKey, connection.password or an SSH agent", c.addr())}
	}
	return methods, cleanup, nil
}
