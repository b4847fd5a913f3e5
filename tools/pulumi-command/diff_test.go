package main

import (
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
)

func baseInputs() resource.PropertyMap {
	return resource.PropertyMap{
		"connection": resource.MakeSecret(resource.NewObjectProperty(resource.PropertyMap{
			"host":       resource.NewStringProperty("10.0.0.1"),
			"port":       resource.NewNumberProperty(22),
			"user":       resource.NewStringProperty("root"),
			"privateKey": resource.NewStringProperty("KEY"),
		})),
		"create":      resource.NewStringProperty("docker run -d --name x img"),
		"delete":      resource.NewStringProperty("docker rm -f x"),
		"environment": resource.NewObjectProperty(resource.PropertyMap{"A": resource.NewStringProperty("1")}),
		"triggers":    resource.NewArrayProperty([]resource.PropertyValue{resource.NewStringProperty("v1")}),
	}
}

func detailKinds(d *pulumirpc.DiffResponse) map[string]pulumirpc.PropertyDiff_Kind {
	out := map[string]pulumirpc.PropertyDiff_Kind{}
	for k, v := range d.DetailedDiff {
		out[k] = v.Kind
	}
	return out
}

func TestDiffNoChange(t *testing.T) {
	olds := baseInputs()
	news := baseInputs()
	// Stored state may contain the outputs; they must not count as input changes.
	olds["stdout"] = resource.NewStringProperty("abc")
	d := computeDiff(olds, news)
	if d.Changes != pulumirpc.DiffResponse_DIFF_NONE || len(d.DetailedDiff) != 0 || len(d.Replaces) != 0 {
		t.Fatalf("expected no diff, got %v", d)
	}
}

func TestDiffCreateChangeIsUpdate(t *testing.T) {
	news := baseInputs()
	news["create"] = resource.NewStringProperty("docker run -d --name x img:2")
	d := computeDiff(baseInputs(), news)
	if d.Changes != pulumirpc.DiffResponse_DIFF_SOME {
		t.Fatalf("expected DIFF_SOME, got %v", d.Changes)
	}
	if len(d.Replaces) != 0 {
		t.Fatalf("a change of create must not replace, got replaces=%v", d.Replaces)
	}
	want := map[string]pulumirpc.PropertyDiff_Kind{"create": pulumirpc.PropertyDiff_UPDATE}
	if got := detailKinds(d); !reflect.DeepEqual(got, want) {
		t.Fatalf("detailed diff = %v, want %v", got, want)
	}
	if !reflect.DeepEqual(d.Diffs, []string{"create"}) {
		t.Fatalf("diffs = %v", d.Diffs)
	}
	if !d.HasDetailedDiff {
		t.Fatal("HasDetailedDiff must be set")
	}
}

func TestDiffConnectionChangeIsUpdateAndHidesSecretStructure(t *testing.T) {
	news := baseInputs()
	news["connection"] = resource.MakeSecret(resource.NewObjectProperty(resource.PropertyMap{
		"host":       resource.NewStringProperty("10.0.0.2"),
		"port":       resource.NewNumberProperty(22),
		"user":       resource.NewStringProperty("root"),
		"privateKey": resource.NewStringProperty("KEY"),
	}))
	d := computeDiff(baseInputs(), news)
	want := map[string]pulumirpc.PropertyDiff_Kind{"connection": pulumirpc.PropertyDiff_UPDATE}
	if got := detailKinds(d); !reflect.DeepEqual(got, want) {
		t.Fatalf("detailed diff = %v, want %v", got, want)
	}
	if len(d.Replaces) != 0 {
		t.Fatalf("a connection change is an update (like upstream), got replaces=%v", d.Replaces)
	}
}

func TestDiffTriggersChangeIsReplace(t *testing.T) {
	news := baseInputs()
	news["triggers"] = resource.NewArrayProperty([]resource.PropertyValue{resource.NewStringProperty("v2")})
	news["create"] = resource.NewStringProperty("other")
	d := computeDiff(baseInputs(), news)
	if !reflect.DeepEqual(d.Replaces, []string{"triggers"}) {
		t.Fatalf("replaces = %v, want [triggers]", d.Replaces)
	}
	want := map[string]pulumirpc.PropertyDiff_Kind{
		"triggers[0]": pulumirpc.PropertyDiff_UPDATE_REPLACE,
		"create":      pulumirpc.PropertyDiff_UPDATE,
	}
	if got := detailKinds(d); !reflect.DeepEqual(got, want) {
		t.Fatalf("detailed diff = %v, want %v", got, want)
	}
	sort.Strings(d.Diffs)
	if !reflect.DeepEqual(d.Diffs, []string{"create", "triggers"}) {
		t.Fatalf("diffs = %v", d.Diffs)
	}
}

func TestDiffTriggersAddedOrResizedIsReplace(t *testing.T) {
	olds := baseInputs()
	delete(olds, "triggers")
	d := computeDiff(olds, baseInputs())
	if got := detailKinds(d); got["triggers"] != pulumirpc.PropertyDiff_ADD_REPLACE {
		t.Fatalf("detailed diff = %v, want triggers ADD_REPLACE", got)
	}
	news := baseInputs()
	news["triggers"] = resource.NewArrayProperty([]resource.PropertyValue{
		resource.NewStringProperty("v1"), resource.NewStringProperty("v2")})
	d = computeDiff(baseInputs(), news)
	if got := detailKinds(d); got["triggers"] != pulumirpc.PropertyDiff_UPDATE_REPLACE || len(d.Replaces) != 1 {
		t.Fatalf("detailed diff = %v replaces=%v", got, d.Replaces)
	}
	news = baseInputs()
	delete(news, "triggers")
	d = computeDiff(baseInputs(), news)
	if got := detailKinds(d); got["triggers"] != pulumirpc.PropertyDiff_DELETE_REPLACE {
		t.Fatalf("detailed diff = %v, want triggers DELETE_REPLACE", got)
	}
}

func TestDiffEnvironmentPaths(t *testing.T) {
	news := baseInputs()
	news["environment"] = resource.NewObjectProperty(resource.PropertyMap{
		"A":     resource.NewStringProperty("2"),
		"B.X":   resource.NewStringProperty("new"),
		"EMPTY": resource.NewNullProperty(),
	})
	d := computeDiff(baseInputs(), news)
	want := map[string]pulumirpc.PropertyDiff_Kind{
		"environment.A":      pulumirpc.PropertyDiff_UPDATE,
		`environment["B.X"]`: pulumirpc.PropertyDiff_ADD,
	}
	if got := detailKinds(d); !reflect.DeepEqual(got, want) {
		t.Fatalf("detailed diff = %v, want %v", got, want)
	}
	// Every detailed diff key must parse as a property path (the engine parses them).
	for k := range d.DetailedDiff {
		if _, err := resource.ParsePropertyPath(k); err != nil {
			t.Fatalf("detailed diff key %q does not parse: %v", k, err)
		}
	}
}

func TestDiffUnknownIsUpdate(t *testing.T) {
	news := baseInputs()
	news["create"] = resource.MakeComputed(resource.NewStringProperty(""))
	d := computeDiff(baseInputs(), news)
	if got := detailKinds(d); got["create"] != pulumirpc.PropertyDiff_UPDATE || d.Changes != pulumirpc.DiffResponse_DIFF_SOME {
		t.Fatalf("an unknown input must show as a possible update, got %v", got)
	}
	news = baseInputs()
	news["triggers"] = resource.NewArrayProperty([]resource.PropertyValue{resource.MakeComputed(resource.NewStringProperty(""))})
	d = computeDiff(baseInputs(), news)
	if len(d.Replaces) != 1 {
		t.Fatalf("an unknown trigger must be a (possible) replace, got %v", d)
	}
}

func TestDiffSecretnessAloneAndNullsAreNotChanges(t *testing.T) {
	olds := baseInputs()
	news := baseInputs()
	news["create"] = resource.MakeSecret(news["create"])
	news["update"] = resource.NewNullProperty()
	d := computeDiff(olds, news)
	if d.Changes != pulumirpc.DiffResponse_DIFF_NONE {
		t.Fatalf("expected no diff, got %v", detailKinds(d))
	}
	// A secret value that changes is reported at the secret's own path.
	olds["stdin"] = resource.MakeSecret(resource.NewStringProperty("token1"))
	news["stdin"] = resource.MakeSecret(resource.NewStringProperty("token2"))
	d = computeDiff(olds, news)
	if got := detailKinds(d); !reflect.DeepEqual(got, map[string]pulumirpc.PropertyDiff_Kind{"stdin": pulumirpc.PropertyDiff_UPDATE}) {
		t.Fatalf("detailed diff = %v", got)
	}
}

func TestDecodeCheckFailures(t *testing.T) {
	_, failures, _ := decodeCommand(remoteCommandToken, resource.PropertyMap{
		"create": resource.NewStringProperty("true"),
	}, true)
	if len(failures) != 1 || failures[0].Property != "connection" {
		t.Fatalf("want a missing-connection failure, got %v", failures)
	}

	in := baseInputs()
	in["logging"] = resource.NewStringProperty("loud")
	conn := in["connection"].SecretValue().Element.ObjectValue()
	conn["privateKey"] = resource.NewStringProperty("-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETSTUFF\n")
	conn["bogus"] = resource.NewStringProperty("SECRETVALUE")
	_, failures, _ = decodeCommand(remoteCommandToken, in, true)
	props := map[string]bool{}
	for _, f := range failures {
		props[f.Property] = true
		if strings.Contains(f.Reason, "SECRET") {
			t.Fatalf("a failure reason echoes a secret value: %q", f.Reason)
		}
	}
	for _, p := range []string{"logging", "connection.privateKey", "connection"} {
		if !props[p] {
			t.Fatalf("missing failure for %s in %v", p, failures)
		}
	}
}

func TestDecodeDefaultsAndUnknowns(t *testing.T) {
	spec, failures, _ := decodeCommand(remoteCommandToken, resource.PropertyMap{
		"connection": resource.MakeSecret(resource.NewObjectProperty(resource.PropertyMap{
			"host": resource.NewStringProperty("h"),
		})),
	}, false)
	if len(failures) != 0 {
		t.Fatal(failures)
	}
	c := spec.Conn
	if c.Port != 22 || c.User != "root" || c.DialErrorLimit != 10 || c.PerDialTimeout != 15 {
		t.Fatalf("defaults not applied: %+v", c)
	}
	if spec.Logging != logStdoutAndStderr || !spec.AddPreviousOutputInEnv {
		t.Fatalf("defaults not applied: %+v", spec)
	}

	// At preview, an unknown host is fine; at apply time it is a failure.
	in := resource.PropertyMap{
		"connection": resource.MakeSecret(resource.NewObjectProperty(resource.PropertyMap{
			"host": resource.MakeComputed(resource.NewStringProperty("")),
		})),
		"create": resource.MakeComputed(resource.NewStringProperty("")),
	}
	if _, failures, unknown := decodeCommand(remoteCommandToken, in, true); len(failures) != 0 || !unknown {
		t.Fatalf("preview: failures=%v unknown=%v", failures, unknown)
	}
	if _, failures, _ := decodeCommand(remoteCommandToken, in, false); len(failures) == 0 {
		t.Fatal("unknown values must fail outside preview")
	}

	// Local commands reject a connection and unsupported asset paths.
	_, failures, _ = decodeCommand(localCommandToken, resource.PropertyMap{
		"connection": resource.NewObjectProperty(resource.PropertyMap{}),
		"assetPaths": resource.NewArrayProperty([]resource.PropertyValue{resource.NewStringProperty("*")}),
	}, true)
	if len(failures) != 2 {
		t.Fatalf("want 2 failures, got %v", failures)
	}
}
