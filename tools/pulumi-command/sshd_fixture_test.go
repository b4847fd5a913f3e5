package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

const sshdPath = "/usr/sbin/sshd"

// testSSHD is a throwaway OpenSSH server on 127.0.0.1 with its own host key and one authorized client key.
type testSSHD struct {
	Port          int
	Dir           string
	ClientKeyPEM  string // OpenSSH private key of the authorized client
	HostPublicKey string // "ssh-ed25519 AAAA..." line of the server's host key
	log           *os.File
	cmd           *exec.Cmd
}

func genKey(t *testing.T) (ed25519.PrivateKey, string, string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return priv, string(pem.EncodeToMemory(block)), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startSSHD starts sshd (extra lines are appended to its config) and stops it (by its process group) when the
// test ends. It skips the test when sshd is not installed or we are not root.
func startSSHD(t *testing.T, extraConfig ...string) *testSSHD {
	t.Helper()
	if _, err := os.Stat(sshdPath); err != nil {
		t.Skipf("skipping: %s is not installed (apt-get install openssh-server to run the SSH tests)", sshdPath)
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: the throwaway sshd must run as root")
	}
	dir := t.TempDir()
	_, hostPEM, hostPub := genKey(t)
	_, clientPEM, clientPub := genKey(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "host_ed25519"), []byte(hostPEM), 0o600))
	must(os.WriteFile(filepath.Join(dir, "authorized_keys"), []byte(clientPub+"\n"), 0o600))
	port := freePort(t)
	cfg := []string{
		"Port " + strconv.Itoa(port),
		"ListenAddress 127.0.0.1",
		"HostKey " + filepath.Join(dir, "host_ed25519"),
		"PidFile " + filepath.Join(dir, "sshd.pid"),
		"AuthorizedKeysFile " + filepath.Join(dir, "authorized_keys"),
		"PermitRootLogin prohibit-password",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PubkeyAuthentication yes",
		"UsePAM no",
		"StrictModes no",
		"AcceptEnv PDSTACK_* PULUMI_COMMAND_*",
		"MaxSessions 20",
		"MaxStartups 50:30:100",
		"AllowTcpForwarding yes",
		"LogLevel ERROR",
	}
	cfg = append(extraConfig, cfg...) // sshd keeps the first value of a keyword: extra lines win
	cfgPath := filepath.Join(dir, "sshd_config")
	must(os.WriteFile(cfgPath, []byte(strings.Join(cfg, "\n")+"\n"), 0o600))

	logf, err := os.Create(filepath.Join(dir, "sshd.log"))
	must(err)
	var cmd *exec.Cmd
	if _, err := os.Stat("/run/sshd"); err == nil {
		cmd = exec.Command(sshdPath, "-f", cfgPath, "-D", "-e")
	} else {
		// sshd needs its privilege separation directory /run/sshd. Rather than creating it on the host, give
		// sshd a private mount namespace with a fresh tmpfs on /run.
		if _, err := exec.LookPath("unshare"); err != nil {
			t.Skip("skipping: /run/sshd is missing and unshare is not available")
		}
		cmd = exec.Command("unshare", "-m", "sh", "-c",
			"mount -t tmpfs tmpfs /run && mkdir -m 755 /run/sshd && exec "+sshdPath+" -f \"$1\" -D -e", "sh", cfgPath)
	}
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	must(cmd.Start())
	s := &testSSHD{Port: port, Dir: dir, ClientKeyPEM: clientPEM, HostPublicKey: hostPub, log: logf, cmd: cmd}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(3 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		logf.Close()
	})

	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-exited:
			out, _ := os.ReadFile(logf.Name())
			t.Fatalf("sshd exited early:\n%s", out)
		default:
		}
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd did not start listening on port %d", port)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s
}

// conn returns a connection spec for the fixture with fast-failing dial settings.
func (s *testSSHD) conn() *connSpec {
	return &connSpec{
		Host:           "127.0.0.1",
		Port:           s.Port,
		User:           "root",
		PrivateKey:     s.ClientKeyPEM,
		DialErrorLimit: 2,
		PerDialTimeout: 5,
	}
}

func (s *testSSHD) logText() string {
	out, _ := os.ReadFile(s.log.Name())
	return string(out)
}

func (s *testSSHD) String() string { return fmt.Sprintf("sshd on 127.0.0.1:%d", s.Port) }
