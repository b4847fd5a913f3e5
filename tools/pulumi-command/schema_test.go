package main

import (
	"encoding/json"
	"testing"
)

func TestSchemaIsValidJSONWithBothConnectionTypes(t *testing.T) {
	var doc struct {
		Types map[string]struct {
			Properties map[string]json.RawMessage `json:"properties"`
			Enum       []map[string]string       `json:"enum"`
		} `json:"types"`
	}
	if err := json.Unmarshal([]byte(schemaJSON), &doc); err != nil {
		t.Fatalf("schema is not valid JSON: %v", err)
	}
	conn, proxy := doc.Types["command:remote:Connection"], doc.Types["command:remote:ProxyConnection"]
	if len(proxy.Properties) != 10 || len(conn.Properties) != len(proxy.Properties)+1 {
		t.Fatalf("connection has %d properties, proxy connection %d", len(conn.Properties), len(proxy.Properties))
	}
	for _, name := range []string{"host", "privateKey", "hostKey", "dialErrorLimit"} {
		if string(conn.Properties[name]) != string(proxy.Properties[name]) {
			t.Errorf("property %s differs between the connection types", name)
		}
	}
	if _, ok := conn.Properties["proxy"]; !ok {
		t.Error("Connection lacks proxy")
	}
	for _, kind := range []string{"command:remote:Logging", "command:local:Logging"} {
		if len(doc.Types[kind].Enum) != 4 {
			t.Errorf("%s has %d values", kind, len(doc.Types[kind].Enum))
		}
	}
}
