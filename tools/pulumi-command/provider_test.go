package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
)

type fakeEngine struct {
	mu   sync.Mutex
	logs []string
}

func (f *fakeEngine) Log(_ context.Context, sev diag.Severity, urn resource.URN, msg string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logs = append(f.logs, string(sev)+"|"+string(urn)+"|"+msg)
	return nil
}

const testURN = "urn:pulumi:dev::pdstack::command:remote:Command::c1"

func mustMarshal(t *testing.T, m resource.PropertyMap) *structpb.Struct {
	t.Helper()
	s, err := marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustUnmarshal(t *testing.T, s *structpb.Struct) resource.PropertyMap {
	t.Helper()
	m, err := unmarshal(s, true)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func strOut(m resource.PropertyMap, k string) string {
	v, _, _ := unwrap(m[resource.PropertyKey(k)])
	if v.IsString() {
		return v.StringValue()
	}
	return "<" + v.TypeString() + ">"
}

func TestProviderLifecycle(t *testing.T) {
	s := startSSHD(t)
	p := newTestProvider(t)
	eng := &fakeEngine{}
	p.host = eng
	ctx := context.Background()
	file := filepath.Join(s.Dir, "created.txt")

	conn := resource.MakeSecret(resource.NewObjectProperty(resource.PropertyMap{
		"host":           resource.NewStringProperty("127.0.0.1"),
		"port":           resource.NewNumberProperty(float64(s.Port)),
		"user":           resource.NewStringProperty("root"),
		"privateKey":     resource.NewStringProperty(s.ClientKeyPEM),
		"dialErrorLimit": resource.NewNumberProperty(2),
		"perDialTimeout": resource.NewNumberProperty(5),
		"hostKey":        resource.NewStringProperty(s.HostPublicKey),
	}))
	inputs := resource.PropertyMap{
		"connection":  conn,
		"create":      resource.NewStringProperty("echo v1 > " + file + " && cat " + file),
		"update":      resource.NewStringProperty(`echo "prev=$PULUMI_COMMAND_STDOUT" >> ` + file + " && echo updated"),
		"delete":      resource.NewStringProperty(`test "$PULUMI_COMMAND_STDOUT" = updated && rm ` + file),
		"environment": resource.NewObjectProperty(resource.PropertyMap{"PDSTACK_X": resource.NewStringProperty("1")}),
		"triggers":    resource.NewArrayProperty([]resource.PropertyValue{resource.NewStringProperty("t1")}),
	}

	// Check passes the inputs through untouched.
	chk, err := p.Check(ctx, &pulumirpc.CheckRequest{Urn: testURN, News: mustMarshal(t, inputs)})
	if err != nil || len(chk.Failures) != 0 {
		t.Fatalf("check: %v %v", err, chk.GetFailures())
	}

	// Preview: nothing runs, outputs unknown.
	prev, err := p.Create(ctx, &pulumirpc.CreateRequest{Urn: testURN, Properties: chk.Inputs, Preview: true})
	if err != nil {
		t.Fatal(err)
	}
	if pm := mustUnmarshal(t, prev.Properties); !pm["stdout"].IsComputed() {
		t.Fatalf("preview stdout should be unknown, got %v", pm["stdout"])
	}
	if _, err := os.Stat(file); err == nil {
		t.Fatal("preview must not run the command")
	}

	// Create.
	cr, err := p.Create(ctx, &pulumirpc.CreateRequest{Urn: testURN, Properties: chk.Inputs})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if cr.Id == "" {
		t.Fatal("empty id")
	}
	state := mustUnmarshal(t, cr.Properties)
	if strOut(state, "stdout") != "v1" {
		t.Fatalf("stdout = %q", strOut(state, "stdout"))
	}
	// The outputs are stdout and stderr only: the inputs (the secret connection among them) are not echoed.
	if len(state) != 2 || !state["stderr"].IsString() {
		t.Fatalf("outputs = %v, want stdout and stderr only", state)
	}
	raw, _ := protojson.Marshal(cr.Properties)
	if strings.Contains(string(raw), "PRIVATE KEY") {
		t.Fatal("private key in the outputs")
	}
	eng.mu.Lock()
	if len(eng.logs) == 0 || eng.logs[0] != "info|"+testURN+"|v1" {
		t.Fatalf("engine logs = %q", eng.logs)
	}
	for _, l := range eng.logs {
		if strings.Contains(l, "PRIVATE KEY") {
			t.Fatal("private key logged")
		}
	}
	eng.mu.Unlock()

	// Diff: create change -> update; triggers change -> replace.
	news := inputs.Copy()
	news["update"] = resource.NewStringProperty(inputs["update"].StringValue() + " ")
	df, err := p.Diff(ctx, &pulumirpc.DiffRequest{Id: cr.Id, Urn: testURN, Olds: cr.Properties,
		OldInputs: chk.Inputs, News: mustMarshal(t, news)})
	if err != nil || df.Changes != pulumirpc.DiffResponse_DIFF_SOME || len(df.Replaces) != 0 {
		t.Fatalf("diff update: %v %v", df, err)
	}
	news2 := inputs.Copy()
	news2["triggers"] = resource.NewArrayProperty([]resource.PropertyValue{resource.NewStringProperty("t2")})
	df, err = p.Diff(ctx, &pulumirpc.DiffRequest{Id: cr.Id, Urn: testURN, Olds: cr.Properties, News: mustMarshal(t, news2)})
	if err != nil || len(df.Replaces) != 1 {
		t.Fatalf("diff replace: %v %v", df, err)
	}

	// Update runs `update` with the previous stdout in the environment.
	up, err := p.Update(ctx, &pulumirpc.UpdateRequest{Id: cr.Id, Urn: testURN, Olds: cr.Properties,
		News: mustMarshal(t, news), OldInputs: chk.Inputs})
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	state = mustUnmarshal(t, up.Properties)
	if strOut(state, "stdout") != "updated" || len(state) != 2 {
		t.Fatalf("update outputs: %v", state)
	}
	content, _ := os.ReadFile(file)
	if string(content) != "v1\nprev=v1\n" {
		t.Fatalf("file after update = %q", content)
	}

	// A failing update returns an error with the exit status.
	bad := news.Copy()
	bad["update"] = resource.NewStringProperty("echo failing; exit 7")
	if _, err := p.Update(ctx, &pulumirpc.UpdateRequest{Id: cr.Id, Urn: testURN, Olds: up.Properties,
		News: mustMarshal(t, bad)}); err == nil || !strings.Contains(err.Error(), "status 7") ||
		!strings.Contains(err.Error(), "failing") {
		t.Fatalf("failing update: %v", err)
	}

	// Read returns the state untouched.
	rd, err := p.Read(ctx, &pulumirpc.ReadRequest{Id: cr.Id, Urn: testURN, Properties: up.Properties, Inputs: up.Properties})
	if err != nil || rd.Id != cr.Id || strOut(mustUnmarshal(t, rd.Properties), "stdout") != "updated" {
		t.Fatalf("read: %v %v", rd, err)
	}

	// Delete runs the delete command of the old inputs with the stored stdout in the environment.
	if _, err := p.Delete(ctx, &pulumirpc.DeleteRequest{Id: cr.Id, Urn: testURN, Properties: up.Properties,
		OldInputs: mustMarshal(t, news)}); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("delete did not remove the file: %v", err)
	}

	// A state that echoes the inputs (an earlier build's, or upstream's), from an engine that sends no old
	// inputs: the delete command comes from the state.
	if err := os.WriteFile(file, []byte("v1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	echoed := news.Copy()
	echoed["stdout"] = resource.NewStringProperty("updated")
	echoed["stderr"] = resource.NewStringProperty("")
	if _, err := p.Delete(ctx, &pulumirpc.DeleteRequest{Id: cr.Id, Urn: testURN, Properties: mustMarshal(t, echoed)}); err != nil {
		t.Fatalf("delete from an echoed state: %v", err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("delete from an echoed state did not remove the file: %v", err)
	}
}

func TestProviderCreateFailureAndTimeout(t *testing.T) {
	s := startSSHD(t)
	p := newTestProvider(t)
	ctx := context.Background()
	conn := resource.MakeSecret(resource.NewObjectProperty(resource.PropertyMap{
		"host":       resource.NewStringProperty("127.0.0.1"),
		"port":       resource.NewNumberProperty(float64(s.Port)),
		"privateKey": resource.NewStringProperty(s.ClientKeyPEM),
	}))
	in := resource.PropertyMap{"connection": conn, "create": resource.NewStringProperty("echo partial; exit 2")}
	resp, err := p.Create(ctx, &pulumirpc.CreateRequest{Urn: testURN, Properties: mustMarshal(t, in)})
	if err == nil || resp != nil || !strings.Contains(err.Error(), "status 2") || !strings.Contains(err.Error(), "partial") {
		t.Fatalf("want a failed create without state, got resp=%v err=%v", resp, err)
	}

	in["create"] = resource.NewStringProperty("sleep 30")
	start := time.Now()
	_, err = p.Create(ctx, &pulumirpc.CreateRequest{Urn: testURN, Properties: mustMarshal(t, in), Timeout: 1})
	if err == nil || time.Since(start) > 8*time.Second {
		t.Fatalf("customTimeouts must bound the command: err=%v after %v", err, time.Since(start))
	}

	// Engine Cancel aborts in-flight operations.
	go func() {
		time.Sleep(500 * time.Millisecond)
		_, _ = p.Cancel(ctx, &emptypb.Empty{})
	}()
	start = time.Now()
	_, err = p.Create(ctx, &pulumirpc.CreateRequest{Urn: testURN, Properties: mustMarshal(t, in)})
	if err == nil || time.Since(start) > 8*time.Second {
		t.Fatalf("Cancel must abort the command: err=%v after %v", err, time.Since(start))
	}
}

func TestProviderMetadata(t *testing.T) {
	p := newTestProvider(t)
	info, err := p.GetPluginInfo(context.Background(), &emptypb.Empty{})
	if err != nil || info.Version != "1.2.1+pdstack" {
		t.Fatalf("plugin info %v %v", info, err)
	}
	sch, err := p.GetSchema(context.Background(), &pulumirpc.GetSchemaRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var parsed struct {
		Name      string                     `json:"name"`
		Resources map[string]json.RawMessage `json:"resources"`
	}
	if err := json.Unmarshal([]byte(sch.Schema), &parsed); err != nil {
		t.Fatalf("schema is not valid JSON: %v", err)
	}
	if parsed.Name != "command" || parsed.Resources[remoteCommandToken] == nil {
		t.Fatalf("schema: %+v", parsed)
	}
	cfg, err := p.Configure(context.Background(), &pulumirpc.ConfigureRequest{})
	if err != nil || !cfg.AcceptSecrets || !cfg.SupportsPreview {
		t.Fatalf("configure: %v %v", cfg, err)
	}
	if _, err := p.Check(context.Background(), &pulumirpc.CheckRequest{Urn: "urn:pulumi:d::p::command:remote:Nope::x"}); err == nil {
		t.Fatal("unknown types must be rejected")
	}
}

func TestLocalCommand(t *testing.T) {
	p := newTestProvider(t)
	dir := t.TempDir()
	in := resource.PropertyMap{
		"create":      resource.NewStringProperty("pwd; echo $PDSTACK_L; cat"),
		"dir":         resource.NewStringProperty(dir),
		"stdin":       resource.NewStringProperty("in"),
		"environment": resource.NewObjectProperty(resource.PropertyMap{"PDSTACK_L": resource.NewStringProperty("env")}),
	}
	cr, err := p.Create(context.Background(), &pulumirpc.CreateRequest{
		Urn: "urn:pulumi:d::p::command:local:Command::l", Properties: mustMarshal(t, in)})
	if err != nil {
		t.Fatal(err)
	}
	if got := strOut(mustUnmarshal(t, cr.Properties), "stdout"); got != dir+"\nenv\nin" {
		t.Fatalf("local stdout = %q", got)
	}
}
