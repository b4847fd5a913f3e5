package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/plugin"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi/provider"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// pluginVersion is reported by GetPluginInfo: this provider implements the pulumi-command 1.2.1 interface but
// is not the upstream binary.
const pluginVersion = "1.2.1+pdstack"

// engineLogger is the part of the engine's host client we use (an interface so tests can capture logs).
type engineLogger interface {
	Log(ctx context.Context, sev diag.Severity, urn resource.URN, msg string) error
}

// cmdProvider implements pulumirpc.ResourceProviderServer for command:remote:Command and command:local:Command.
type cmdProvider struct {
	pulumirpc.UnimplementedResourceProviderServer

	pool *sshPool

	hostMu sync.Mutex
	host   engineLogger
	owned  *provider.HostClient // a host client we created (Attach/Handshake) and must close

	cancelCtx context.Context // cancelled by the engine's Cancel RPC
	cancel    context.CancelFunc
}

func newProvider(host *provider.HostClient) *cmdProvider {
	ctx, cancel := context.WithCancel(context.Background())
	p := &cmdProvider{pool: newSSHPool(), cancelCtx: ctx, cancel: cancel}
	if host != nil {
		p.host = host
	}
	return p
}

// shutdown closes every SSH connection and any engine connection we opened.
func (p *cmdProvider) shutdown() {
	p.cancel()
	p.pool.closeAll()
	p.hostMu.Lock()
	defer p.hostMu.Unlock()
	if p.owned != nil {
		_ = p.owned.Close()
		p.owned = nil
	}
}

func (p *cmdProvider) setEngineAddress(addr string, replace bool) error {
	if addr == "" {
		return nil
	}
	p.hostMu.Lock()
	defer p.hostMu.Unlock()
	if p.host != nil && !replace {
		return nil
	}
	hc, err := provider.NewHostClient(addr)
	if err != nil {
		return fmt.Errorf("connecting to the engine at %s: %w", addr, err)
	}
	if p.owned != nil {
		_ = p.owned.Close()
	}
	p.owned = hc
	p.host = hc
	return nil
}

func (p *cmdProvider) logger() engineLogger {
	p.hostMu.Lock()
	defer p.hostMu.Unlock()
	return p.host
}

// engineSink streams command output to the engine log, attached to the resource's URN.
type engineSink struct {
	ctx context.Context
	log engineLogger
	urn resource.URN
	mu  sync.Mutex
}

func (s *engineSink) Line(_ string, line string) {
	if s.log == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.log.Log(s.ctx, diag.Info, s.urn, line)
}

func (s *engineSink) Warn(msg string) {
	if s.log == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.log.Log(s.ctx, diag.Warning, s.urn, msg)
}

func (p *cmdProvider) sink(ctx context.Context, urn string) logSink {
	// Log calls use a context that survives the operation's own cancellation, so the last lines still arrive.
	return &engineSink{ctx: context.WithoutCancel(ctx), log: p.logger(), urn: resource.URN(urn)}
}

// opContext derives the context of one operation: cancelled by the request, by the engine's Cancel RPC, and
// bounded by the resource's customTimeouts (timeout in seconds, 0 = none).
func (p *cmdProvider) opContext(ctx context.Context, timeout float64) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(p.cancelCtx, cancel)
	if timeout > 0 {
		var cancelT context.CancelFunc
		ctx, cancelT = context.WithTimeout(ctx, time.Duration(timeout*float64(time.Second)))
		return ctx, func() { cancelT(); stop(); cancel() }
	}
	return ctx, func() { stop(); cancel() }
}

// ----- plugin metadata -----

func (p *cmdProvider) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: pluginVersion}, nil
}

func (p *cmdProvider) GetSchema(_ context.Context, req *pulumirpc.GetSchemaRequest) (*pulumirpc.GetSchemaResponse, error) {
	if req.GetSubpackageName() != "" {
		return nil, fmt.Errorf("the command provider has no subpackage %q", req.GetSubpackageName())
	}
	return &pulumirpc.GetSchemaResponse{Schema: schemaJSON}, nil
}

func (p *cmdProvider) Handshake(_ context.Context, req *pulumirpc.ProviderHandshakeRequest,
) (*pulumirpc.ProviderHandshakeResponse, error) {
	if err := p.setEngineAddress(req.GetEngineAddress(), false); err != nil {
		return nil, err
	}
	return &pulumirpc.ProviderHandshakeResponse{AcceptSecrets: true}, nil
}

func (p *cmdProvider) Attach(_ context.Context, req *pulumirpc.PluginAttach) (*emptypb.Empty, error) {
	if err := p.setEngineAddress(req.GetAddress(), true); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (p *cmdProvider) Cancel(context.Context, *emptypb.Empty) (*emptypb.Empty, error) {
	p.cancel()
	return &emptypb.Empty{}, nil
}

// ----- provider configuration (the provider has none) -----

func (p *cmdProvider) CheckConfig(_ context.Context, req *pulumirpc.CheckRequest) (*pulumirpc.CheckResponse, error) {
	return &pulumirpc.CheckResponse{Inputs: req.GetNews()}, nil
}

func (p *cmdProvider) DiffConfig(_ context.Context, req *pulumirpc.DiffRequest) (*pulumirpc.DiffResponse, error) {
	olds, err := unmarshal(req.GetOldInputs(), true)
	if err != nil {
		return nil, err
	}
	if req.GetOldInputs() == nil {
		if olds, err = unmarshal(req.GetOlds(), true); err != nil {
			return nil, err
		}
	}
	news, err := unmarshal(req.GetNews(), true)
	if err != nil {
		return nil, err
	}
	var changed []string
	for _, k := range unionKeys(olds, news) {
		if !valuesEqual(olds[resource.PropertyKey(k)], news[resource.PropertyKey(k)]) {
			changed = append(changed, k)
		}
	}
	resp := &pulumirpc.DiffResponse{Changes: pulumirpc.DiffResponse_DIFF_NONE}
	if len(changed) > 0 {
		// Nothing in the provider configuration requires replacing resources.
		resp.Changes = pulumirpc.DiffResponse_DIFF_SOME
		resp.Diffs = changed
	}
	return resp, nil
}

func (p *cmdProvider) Configure(context.Context, *pulumirpc.ConfigureRequest) (*pulumirpc.ConfigureResponse, error) {
	return &pulumirpc.ConfigureResponse{AcceptSecrets: true, SupportsPreview: true}, nil
}

// ----- resources -----

func resourceType(urn, typ string) (string, error) {
	if typ == "" {
		typ = string(resource.URN(urn).Type())
	}
	switch typ {
	case remoteCommandToken, localCommandToken:
		return typ, nil
	}
	return "", fmt.Errorf("unknown resource type %q: this build of the command provider supports %s and %s",
		typ, remoteCommandToken, localCommandToken)
}

func unmarshal(s *structpb.Struct, keepUnknowns bool) (resource.PropertyMap, error) {
	if s == nil {
		return resource.PropertyMap{}, nil
	}
	return plugin.UnmarshalProperties(s, plugin.MarshalOptions{
		KeepUnknowns:   keepUnknowns,
		RejectUnknowns: !keepUnknowns,
		KeepSecrets:    true,
		KeepResources:  true,
	})
}

func marshal(m resource.PropertyMap) (*structpb.Struct, error) {
	return plugin.MarshalProperties(m, plugin.MarshalOptions{
		KeepUnknowns:  true,
		KeepSecrets:   true,
		KeepResources: true,
	})
}

func failuresError(typ string, failures []checkFailure) error {
	msgs := make([]string, len(failures))
	for i, f := range failures {
		msgs[i] = fmt.Sprintf("%s: %s", f.Property, f.Reason)
	}
	return fmt.Errorf("invalid inputs for %s: %s", typ, strings.Join(msgs, "; "))
}

func (p *cmdProvider) Check(_ context.Context, req *pulumirpc.CheckRequest) (*pulumirpc.CheckResponse, error) {
	typ, err := resourceType(req.GetUrn(), req.GetType())
	if err != nil {
		return nil, err
	}
	news, err := unmarshal(req.GetNews(), true)
	if err != nil {
		return nil, err
	}
	_, failures, _ := decodeCommand(typ, news, true)
	resp := &pulumirpc.CheckResponse{Inputs: req.GetNews()}
	for _, f := range failures {
		resp.Failures = append(resp.Failures, &pulumirpc.CheckFailure{Property: f.Property, Reason: f.Reason})
	}
	return resp, nil
}

func (p *cmdProvider) Diff(_ context.Context, req *pulumirpc.DiffRequest) (*pulumirpc.DiffResponse, error) {
	if _, err := resourceType(req.GetUrn(), req.GetType()); err != nil {
		return nil, err
	}
	var olds resource.PropertyMap
	var err error
	if req.GetOldInputs() != nil {
		olds, err = unmarshal(req.GetOldInputs(), true)
	} else {
		olds, err = unmarshal(req.GetOlds(), true)
		olds = inputsFromState(olds)
	}
	if err != nil {
		return nil, err
	}
	news, err := unmarshal(req.GetNews(), true)
	if err != nil {
		return nil, err
	}
	return computeDiff(olds, news), nil
}

// outputsOf returns a command's outputs: stdout and stderr (unknown when out is nil: a preview).
//
// Unlike upstream, the inputs are not echoed into the outputs. The engine keeps a resource's inputs and its
// outputs, and a DIY backend rewrites the whole state after every step: an echo doubled every script, stdin
// and secret connection in it, and those writes are most of the engine's CPU in a large `up`. Nothing reads
// the echo (Diff and Delete get the old inputs from the engine; Update needs only stdout/stderr).
func outputsOf(out *prevOutputs) resource.PropertyMap {
	m := resource.PropertyMap{}
	if out == nil {
		m[propStdout] = resource.MakeComputed(resource.NewStringProperty(""))
		m[propStderr] = resource.MakeComputed(resource.NewStringProperty(""))
	} else {
		m[propStdout] = resource.NewStringProperty(out.Stdout)
		m[propStderr] = resource.NewStringProperty(out.Stderr)
	}
	return m
}

func (p *cmdProvider) run(ctx context.Context, urn string, spec *commandSpec, cmd string, secret bool,
	prev *prevOutputs,
) (*prevOutputs, error) {
	sink := p.sink(ctx, urn)
	var (
		stdout, stderr string
		err            error
	)
	if spec.Conn != nil {
		stdout, stderr, err = p.runRemote(ctx, spec, cmd, secret, prev, sink)
	} else {
		stdout, stderr, err = runLocal(ctx, spec, cmd, secret, prev, sink)
	}
	return &prevOutputs{Stdout: stdout, Stderr: stderr}, err
}

func newID() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

func (p *cmdProvider) Create(ctx context.Context, req *pulumirpc.CreateRequest) (*pulumirpc.CreateResponse, error) {
	typ, err := resourceType(req.GetUrn(), req.GetType())
	if err != nil {
		return nil, err
	}
	inputs, err := unmarshal(req.GetProperties(), req.GetPreview())
	if err != nil {
		return nil, err
	}
	spec, failures, _ := decodeCommand(typ, inputs, req.GetPreview())
	if len(failures) > 0 {
		return nil, failuresError(typ, failures)
	}
	if req.GetPreview() {
		// A preview never connects anywhere: the outputs of the command are unknown.
		props, err := marshal(outputsOf(nil))
		if err != nil {
			return nil, err
		}
		return &pulumirpc.CreateResponse{Properties: props}, nil
	}

	id, err := newID()
	if err != nil {
		return nil, err
	}
	out := &prevOutputs{}
	if spec.Create != nil {
		opCtx, cancel := p.opContext(ctx, req.GetTimeout())
		defer cancel()
		out, err = p.run(opCtx, req.GetUrn(), spec, *spec.Create, spec.CreateSecret, nil)
		if err != nil {
			// Like upstream: a failed create records nothing.
			return nil, err
		}
	}
	props, err := marshal(outputsOf(out))
	if err != nil {
		return nil, err
	}
	return &pulumirpc.CreateResponse{Id: id, Properties: props}, nil
}

func stateOutputs(state resource.PropertyMap) *prevOutputs {
	get := func(k resource.PropertyKey) string {
		v, _, unknown := unwrap(state[k])
		if unknown || !v.IsString() {
			return ""
		}
		return v.StringValue()
	}
	return &prevOutputs{Stdout: get(propStdout), Stderr: get(propStderr)}
}

func (p *cmdProvider) Update(ctx context.Context, req *pulumirpc.UpdateRequest) (*pulumirpc.UpdateResponse, error) {
	typ, err := resourceType(req.GetUrn(), req.GetType())
	if err != nil {
		return nil, err
	}
	olds, err := unmarshal(req.GetOlds(), true)
	if err != nil {
		return nil, err
	}
	news, err := unmarshal(req.GetNews(), req.GetPreview())
	if err != nil {
		return nil, err
	}
	spec, failures, _ := decodeCommand(typ, news, req.GetPreview())
	if len(failures) > 0 {
		return nil, failuresError(typ, failures)
	}
	cmd, secret := spec.Update, spec.UpdateSecret
	if cmd == nil {
		cmd, secret = spec.Create, spec.CreateSecret
	}
	prev := stateOutputs(olds)
	if req.GetPreview() {
		var outs *prevOutputs // unknown: the command will run
		if cmd == nil {
			outs = prev
		}
		props, err := marshal(outputsOf(outs))
		if err != nil {
			return nil, err
		}
		return &pulumirpc.UpdateResponse{Properties: props}, nil
	}
	out := prev
	if cmd != nil {
		opCtx, cancel := p.opContext(ctx, req.GetTimeout())
		defer cancel()
		out, err = p.run(opCtx, req.GetUrn(), spec, *cmd, secret, prev)
		if err != nil {
			// The engine keeps the old state, so the next `up` retries the update.
			return nil, err
		}
	}
	props, err := marshal(outputsOf(out))
	if err != nil {
		return nil, err
	}
	return &pulumirpc.UpdateResponse{Properties: props}, nil
}

func (p *cmdProvider) Delete(ctx context.Context, req *pulumirpc.DeleteRequest) (*emptypb.Empty, error) {
	typ, err := resourceType(req.GetUrn(), req.GetType())
	if err != nil {
		return nil, err
	}
	state, err := unmarshal(req.GetProperties(), false)
	if err != nil {
		return nil, err
	}
	// The delete command and connection are inputs. A state written by an earlier build (or upstream)
	// echoes them in the outputs too, which is all an engine that sends no old inputs offers.
	inputs := inputsFromState(state)
	if req.GetOldInputs() != nil {
		if inputs, err = unmarshal(req.GetOldInputs(), false); err != nil {
			return nil, err
		}
	}
	spec, failures, _ := decodeCommand(typ, inputs, false)
	if spec.Delete == nil {
		return &emptypb.Empty{}, nil
	}
	if len(failures) > 0 {
		return nil, failuresError(typ, failures)
	}
	opCtx, cancel := p.opContext(ctx, req.GetTimeout())
	defer cancel()
	if _, err := p.run(opCtx, req.GetUrn(), spec, *spec.Delete, spec.DeleteSecret, stateOutputs(state)); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Read returns the stored state unchanged: there is nothing to read back from a command (no drift detection,
// same as upstream).
func (p *cmdProvider) Read(_ context.Context, req *pulumirpc.ReadRequest) (*pulumirpc.ReadResponse, error) {
	if _, err := resourceType(req.GetUrn(), req.GetType()); err != nil {
		return nil, err
	}
	return &pulumirpc.ReadResponse{Id: req.GetId(), Properties: req.GetProperties(), Inputs: req.GetInputs()}, nil
}

func unionKeys(a, b resource.PropertyMap) []string {
	seen := map[string]bool{}
	for k := range a {
		seen[string(k)] = true
	}
	for k := range b {
		seen[string(k)] = true
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
