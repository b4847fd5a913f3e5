package main

import (
	"fmt"
	"math"
	"net"
	"sort"
	"strconv"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"golang.org/x/crypto/ssh"
)

// Type tokens served by this provider (the same tokens the pulumi_command 1.2.1 SDKs use).
const (
	remoteCommandToken = "command:remote:Command"
	localCommandToken  = "command:local:Command"
)

// Property names of command resources (camelCase, as on the wire).
const (
	propConnection   = "connection"
	propCreate       = "create"
	propUpdate       = "update"
	propDelete       = "delete"
	propEnvironment  = "environment"
	propTriggers     = "triggers"
	propStdin        = "stdin"
	propLogging      = "logging"
	propAddPrevOut   = "addPreviousOutputInEnv"
	propStdout       = "stdout"
	propStderr       = "stderr"
	propInterpreter  = "interpreter"
	propDir          = "dir"
	propAssetPaths   = "assetPaths"
	propArchivePaths = "archivePaths"
)

// Logging modes (enum command:remote:Logging / command:local:Logging).
const (
	logStdout          = "stdout"
	logStderr          = "stderr"
	logStdoutAndStderr = "stdoutAndStderr"
	logNone            = "none"
)

// Connection defaults; the SDKs fill these in too, but a raw gRPC caller may not.
const (
	defaultPort           = 22
	defaultUser           = "root"
	defaultDialErrorLimit = 10
	defaultPerDialTimeout = 15 // seconds
)

// connSpec is a decoded `connection` (or `connection.proxy`) object.
type connSpec struct {
	Host               string
	Port               int
	User               string
	Password           string
	PrivateKey         string
	PrivateKeyPassword string
	AgentSocketPath    string
	DialErrorLimit     int // -1 = unlimited
	PerDialTimeout     int // seconds; 0 = no limit
	HostKey            string
	Proxy              *connSpec
}

func (c *connSpec) addr() string {
	return joinHostPort(c.Host, c.Port)
}

// commandSpec is a decoded command resource (remote or local).
type commandSpec struct {
	Conn *connSpec // nil for command:local:Command

	Create, Update, Delete                   *string
	CreateSecret, UpdateSecret, DeleteSecret bool // the command text itself is secret: never echo it

	Environment            map[string]string
	Stdin                  *string
	Logging                string
	AddPreviousOutputInEnv bool

	// command:local:Command only.
	Interpreter []string
	Dir         string
}

// envKeys returns the environment variable names in a stable order.
func (c *commandSpec) envKeys() []string {
	keys := make([]string, 0, len(c.Environment))
	for k := range c.Environment {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// checkFailure is one input validation error. Reasons never contain property values (they may be secret).
type checkFailure struct {
	Property string
	Reason   string
}

// unwrap strips secret markers (and known output wrappers) from v. It reports whether a secret marker was
// seen and whether the value (at this level) is unknown.
func unwrap(v resource.PropertyValue) (inner resource.PropertyValue, secret, unknown bool) {
	for {
		switch {
		case v.IsSecret():
			secret = true
			v = v.SecretValue().Element
		case v.IsOutput():
			o := v.OutputValue()
			if o.Secret {
				secret = true
			}
			if !o.Known {
				return v, secret, true
			}
			v = o.Element
		case v.IsComputed():
			return v, secret, true
		default:
			return v, secret, false
		}
	}
}

// deepUnwrap returns v with every secret/output wrapper removed at every depth, and whether any unknown
// value remains inside.
func deepUnwrap(v resource.PropertyValue) (resource.PropertyValue, bool) {
	v, _, unknown := unwrap(v)
	if unknown {
		return v, true
	}
	switch {
	case v.IsObject():
		out := resource.PropertyMap{}
		anyUnknown := false
		for k, e := range v.ObjectValue() {
			u, unk := deepUnwrap(e)
			anyUnknown = anyUnknown || unk
			out[k] = u
		}
		return resource.NewObjectProperty(out), anyUnknown
	case v.IsArray():
		arr := v.ArrayValue()
		out := make([]resource.PropertyValue, len(arr))
		anyUnknown := false
		for i, e := range arr {
			u, unk := deepUnwrap(e)
			anyUnknown = anyUnknown || unk
			out[i] = u
		}
		return resource.NewArrayProperty(out), anyUnknown
	}
	return v, false
}

// decoder collects validation failures while reading a property map. When allowUnknown is false an unknown
// value is itself a failure (used for real Create/Update/Delete, where everything must be known).
type decoder struct {
	failures     []checkFailure
	allowUnknown bool
	sawUnknown   bool
}

func (d *decoder) fail(prop, format string, args ...any) {
	d.failures = append(d.failures, checkFailure{Property: prop, Reason: fmt.Sprintf(format, args...)})
}

// get returns the unwrapped value of key, whether it is present (non-null), whether it is secret and whether
// it is unknown.
func (d *decoder) get(m resource.PropertyMap, key, path string) (v resource.PropertyValue, ok, secret, unknown bool) {
	raw, has := m[resource.PropertyKey(key)]
	if !has {
		return v, false, false, false
	}
	v, secret, unknown = unwrap(raw)
	if unknown {
		d.sawUnknown = true
		if !d.allowUnknown {
			d.fail(path, "value is unknown")
		}
		return v, true, secret, true
	}
	if v.IsNull() {
		return v, false, secret, false
	}
	return v, true, secret, false
}

func (d *decoder) str(m resource.PropertyMap, key, path string) (s *string, secret bool) {
	v, ok, secret, unknown := d.get(m, key, path)
	if !ok || unknown {
		return nil, secret
	}
	if !v.IsString() {
		d.fail(path, "expected a string, got %s", v.TypeString())
		return nil, secret
	}
	out := v.StringValue()
	return &out, secret
}

func (d *decoder) integer(m resource.PropertyMap, key, path string, def int) int {
	v, ok, _, unknown := d.get(m, key, path)
	if !ok || unknown {
		return def
	}
	var f float64
	switch {
	case v.IsNumber():
		f = v.NumberValue()
	case v.IsString():
		parsed, err := strconv.ParseFloat(v.StringValue(), 64)
		if err != nil {
			d.fail(path, "expected a number")
			return def
		}
		f = parsed
	default:
		d.fail(path, "expected a number, got %s", v.TypeString())
		return def
	}
	if f != math.Trunc(f) || f > math.MaxInt32 || f < math.MinInt32 {
		d.fail(path, "expected an integer")
		return def
	}
	return int(f)
}

func (d *decoder) boolean(m resource.PropertyMap, key, path string, def bool) bool {
	v, ok, _, unknown := d.get(m, key, path)
	if !ok || unknown {
		return def
	}
	switch {
	case v.IsBool():
		return v.BoolValue()
	case v.IsString():
		b, err := strconv.ParseBool(v.StringValue())
		if err == nil {
			return b
		}
	}
	d.fail(path, "expected a boolean, got %s", v.TypeString())
	return def
}

var connectionKeys = map[string]bool{
	"host": true, "port": true, "user": true, "password": true, "privateKey": true,
	"privateKeyPassword": true, "agentSocketPath": true, "dialErrorLimit": true,
	"perDialTimeout": true, "hostKey": true, "proxy": true,
}

// connection decodes a connection object. It returns nil when the object (or its host) is unknown.
func (d *decoder) connection(m resource.PropertyMap, key, path string, allowProxy bool) *connSpec {
	v, ok, _, unknown := d.get(m, key, path)
	if !ok {
		if path == propConnection {
			d.fail(path, "missing required property 'connection'")
		}
		return nil
	}
	if unknown {
		return nil
	}
	if !v.IsObject() {
		d.fail(path, "expected an object, got %s", v.TypeString())
		return nil
	}
	obj := v.ObjectValue()
	for _, k := range obj.StableKeys() {
		if !connectionKeys[string(k)] || (!allowProxy && k == "proxy") {
			// Never echo the value: connection objects are secret.
			d.fail(path, "unknown property %q", string(k))
		}
	}
	c := &connSpec{}
	hostUnknown := false
	if h, ok, _, unk := d.get(obj, "host", path+".host"); !ok {
		d.fail(path+".host", "missing required property 'host'")
	} else if unk {
		hostUnknown = true
	} else if !h.IsString() || h.StringValue() == "" {
		d.fail(path+".host", "expected a non-empty string")
	} else {
		c.Host = h.StringValue()
	}
	c.Port = d.integer(obj, "port", path+".port", defaultPort)
	if c.Port <= 0 || c.Port > 65535 {
		d.fail(path+".port", "port must be between 1 and 65535")
	}
	c.User = defaultUser
	if s, _ := d.str(obj, "user", path+".user"); s != nil && *s != "" {
		c.User = *s
	}
	if s, _ := d.str(obj, "password", path+".password"); s != nil {
		c.Password = *s
	}
	if s, _ := d.str(obj, "privateKey", path+".privateKey"); s != nil {
		c.PrivateKey = *s
	}
	if s, _ := d.str(obj, "privateKeyPassword", path+".privateKeyPassword"); s != nil {
		c.PrivateKeyPassword = *s
	}
	if s, _ := d.str(obj, "agentSocketPath", path+".agentSocketPath"); s != nil {
		c.AgentSocketPath = *s
	}
	c.DialErrorLimit = d.integer(obj, "dialErrorLimit", path+".dialErrorLimit", defaultDialErrorLimit)
	if c.DialErrorLimit < -1 {
		d.fail(path+".dialErrorLimit", "must be -1 (unlimited) or a non-negative number")
	}
	c.PerDialTimeout = d.integer(obj, "perDialTimeout", path+".perDialTimeout", defaultPerDialTimeout)
	if c.PerDialTimeout < 0 {
		d.fail(path+".perDialTimeout", "must be 0 (no limit) or a positive number of seconds")
	}
	if s, _ := d.str(obj, "hostKey", path+".hostKey"); s != nil {
		c.HostKey = *s
	}
	if allowProxy {
		c.Proxy = d.connection(obj, "proxy", path+".proxy", false)
	}

	// Validate key material early (at preview) without ever echoing it.
	if c.PrivateKey != "" {
		if _, err := parsePrivateKey(c.PrivateKey, c.PrivateKeyPassword); err != nil {
			d.fail(path+".privateKey", "%v", err)
		}
	}
	if c.HostKey != "" {
		if _, err := parseHostKey(c.HostKey); err != nil {
			d.fail(path+".hostKey", "%v", err)
		}
	}
	if hostUnknown {
		return nil
	}
	return c
}

var commonCommandKeys = map[string]bool{
	propCreate: true, propUpdate: true, propDelete: true, propEnvironment: true, propTriggers: true,
	propStdin: true, propLogging: true, propAddPrevOut: true,
}

// decodeCommand decodes the inputs (or stored state) of a command resource. Output-only properties (stdout,
// stderr) are ignored so the same function reads inputs and state.
func decodeCommand(typ string, m resource.PropertyMap, allowUnknown bool) (*commandSpec, []checkFailure, bool) {
	d := &decoder{allowUnknown: allowUnknown}
	spec := &commandSpec{Logging: logStdoutAndStderr, AddPreviousOutputInEnv: true}
	local := typ == localCommandToken

	for _, k := range m.StableKeys() {
		ks := string(k)
		if commonCommandKeys[ks] || resource.IsInternalPropertyKey(k) || ks == propStdout || ks == propStderr {
			continue
		}
		if !local && ks == propConnection {
			continue
		}
		if local && (ks == propInterpreter || ks == propDir || ks == propAssetPaths || ks == propArchivePaths ||
			ks == "assets" || ks == "archive") {
			continue
		}
		d.fail(ks, "unknown property %q for %s", ks, typ)
	}

	if !local {
		spec.Conn = d.connection(m, propConnection, propConnection, true)
	}
	spec.Create, spec.CreateSecret = d.str(m, propCreate, propCreate)
	spec.Update, spec.UpdateSecret = d.str(m, propUpdate, propUpdate)
	spec.Delete, spec.DeleteSecret = d.str(m, propDelete, propDelete)
	spec.Stdin, _ = d.str(m, propStdin, propStdin)

	if env, ok, _, unknown := d.get(m, propEnvironment, propEnvironment); ok && !unknown {
		if !env.IsObject() {
			d.fail(propEnvironment, "expected a map of strings, got %s", env.TypeString())
		} else {
			spec.Environment = map[string]string{}
			obj := env.ObjectValue()
			for _, k := range obj.StableKeys() {
				if s, _ := d.str(obj, string(k), propEnvironment+"."+string(k)); s != nil {
					spec.Environment[string(k)] = *s
				}
			}
		}
	}

	if tr, ok, _, unknown := d.get(m, propTriggers, propTriggers); ok && !unknown && !tr.IsArray() {
		d.fail(propTriggers, "expected an array, got %s", tr.TypeString())
	}

	if s, _ := d.str(m, propLogging, propLogging); s != nil {
		switch *s {
		case logStdout, logStderr, logStdoutAndStderr, logNone:
			spec.Logging = *s
		default:
			d.fail(propLogging, "must be one of stdout, stderr, stdoutAndStderr, none")
		}
	}
	spec.AddPreviousOutputInEnv = d.boolean(m, propAddPrevOut, propAddPrevOut, true)

	if local {
		if v, ok, _, unknown := d.get(m, propInterpreter, propInterpreter); ok && !unknown {
			if !v.IsArray() {
				d.fail(propInterpreter, "expected an array of strings")
			} else {
				for i, e := range v.ArrayValue() {
					e, _, unk := unwrap(e)
					switch {
					case unk:
						d.sawUnknown = true
						if !allowUnknown {
							d.fail(propInterpreter, "value is unknown")
						}
					case e.IsString():
						spec.Interpreter = append(spec.Interpreter, e.StringValue())
					default:
						d.fail(fmt.Sprintf("%s[%d]", propInterpreter, i), "expected a string")
					}
				}
			}
		}
		if s, _ := d.str(m, propDir, propDir); s != nil {
			spec.Dir = *s
		}
		for _, k := range []string{propAssetPaths, propArchivePaths} {
			if v, ok, _, _ := d.get(m, k, k); ok && !(v.IsArray() && len(v.ArrayValue()) == 0) {
				d.fail(k, "%s is not supported by this build of the command provider", k)
			}
		}
	}
	return spec, d.failures, d.sawUnknown
}

// parsePrivateKey parses an OpenSSH/PEM private key. Errors never include key material.
func parsePrivateKey(key, passphrase string) (ssh.Signer, error) {
	var (
		signer ssh.Signer
		err    error
	)
	if passphrase != "" {
		signer, err = ssh.ParsePrivateKeyWithPassphrase([]byte(key), []byte(passphrase))
	} else {
		signer, err = ssh.ParsePrivateKey([]byte(key))
	}
	if err != nil {
		if _, ok := err.(*ssh.PassphraseMissingError); ok {
			return nil, fmt.Errorf("the private key is encrypted: set privateKeyPassword")
		}
		return nil, fmt.Errorf("could not parse the private key (contents not shown): %s", sanitizeKeyErr(err))
	}
	return signer, nil
}

// sanitizeKeyErr shortens a key parsing error. x/crypto/ssh parse errors describe the format problem, not the
// key bytes; the length cap is a second guard.
func sanitizeKeyErr(err error) string {
	msg := err.Error()
	if len(msg) > 120 {
		msg = msg[:120]
	}
	return msg
}

// parseHostKey parses an expected host key: an authorized_keys style line ("ssh-ed25519 AAAA... comment") or
// a known_hosts line ("host ssh-ed25519 AAAA...").
func parseHostKey(s string) (ssh.PublicKey, error) {
	if k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s)); err == nil {
		return k, nil
	}
	if _, _, k, _, _, err := ssh.ParseKnownHosts([]byte(s)); err == nil {
		return k, nil
	}
	return nil, fmt.Errorf("could not parse hostKey: expected an OpenSSH public key line such as \"ssh-ed25519 AAAA...\"")
}

func joinHostPort(host string, port int) string {
	if port == 0 {
		port = defaultPort
	}
	// net.JoinHostPort brackets IPv6 literals.
	return net.JoinHostPort(host, strconv.Itoa(port))
}
