package main

import (
	"sort"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
)

// outputOnlyKeys are properties that exist only in the state, never in the inputs.
var outputOnlyKeys = map[resource.PropertyKey]bool{
	propStdout: true,
	propStderr: true,
	"assets":   true,
	"archive":  true,
}

// replaceKeys are inputs whose change forces a replacement (schema replaceOnChanges).
var replaceKeys = map[resource.PropertyKey]bool{
	propTriggers: true,
}

// inputsFromState strips output-only properties from a stored state, for engines that do not send old inputs.
func inputsFromState(state resource.PropertyMap) resource.PropertyMap {
	out := resource.PropertyMap{}
	for k, v := range state {
		if !outputOnlyKeys[k] {
			out[k] = v
		}
	}
	return out
}

// present reports whether key has a non-null value (after unwrapping secrets).
func present(m resource.PropertyMap, key resource.PropertyKey) (resource.PropertyValue, bool) {
	v, ok := m[key]
	if !ok {
		return v, false
	}
	inner, _, unknown := unwrap(v)
	if !unknown && inner.IsNull() {
		return v, false
	}
	return v, true
}

// computeDiff compares old inputs with new inputs. Any change of `triggers` is a replacement; any other
// change is an in-place update. The detailed diff names the changed paths (stopping at secret values, whose
// structure is not revealed).
func computeDiff(olds, news resource.PropertyMap) *pulumirpc.DiffResponse {
	keys := map[resource.PropertyKey]bool{}
	for k := range olds {
		keys[k] = true
	}
	for k := range news {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		if outputOnlyKeys[k] || resource.IsInternalPropertyKey(k) {
			continue
		}
		sorted = append(sorted, string(k))
	}
	sort.Strings(sorted)

	detailed := map[string]*pulumirpc.PropertyDiff{}
	var diffs, replaces []string
	for _, ks := range sorted {
		k := resource.PropertyKey(ks)
		ov, oOK := present(olds, k)
		nv, nOK := present(news, k)
		before := len(detailed)
		diffValue(resource.PropertyPath{ks}, ov, oOK, nv, nOK, detailed)
		if len(detailed) == before {
			continue
		}
		diffs = append(diffs, ks)
		if replaceKeys[k] {
			replaces = append(replaces, ks)
		}
	}
	if len(replaces) > 0 {
		for path, d := range detailed {
			p, err := resource.ParsePropertyPath(path)
			if err != nil || len(p) == 0 {
				continue
			}
			if root, ok := p[0].(string); ok && replaceKeys[resource.PropertyKey(root)] {
				d.Kind = toReplaceKind(d.Kind)
			}
		}
	}

	resp := &pulumirpc.DiffResponse{
		Changes:         pulumirpc.DiffResponse_DIFF_NONE,
		HasDetailedDiff: true,
		DetailedDiff:    detailed,
		Diffs:           diffs,
		Replaces:        replaces,
	}
	if len(diffs) > 0 {
		resp.Changes = pulumirpc.DiffResponse_DIFF_SOME
	}
	return resp
}

func toReplaceKind(k pulumirpc.PropertyDiff_Kind) pulumirpc.PropertyDiff_Kind {
	switch k {
	case pulumirpc.PropertyDiff_ADD:
		return pulumirpc.PropertyDiff_ADD_REPLACE
	case pulumirpc.PropertyDiff_DELETE:
		return pulumirpc.PropertyDiff_DELETE_REPLACE
	case pulumirpc.PropertyDiff_UPDATE:
		return pulumirpc.PropertyDiff_UPDATE_REPLACE
	}
	return k
}

func diffValue(path resource.PropertyPath, ov resource.PropertyValue, oOK bool, nv resource.PropertyValue, nOK bool,
	out map[string]*pulumirpc.PropertyDiff,
) {
	add := func(kind pulumirpc.PropertyDiff_Kind) {
		out[path.String()] = &pulumirpc.PropertyDiff{Kind: kind, InputDiff: true}
	}
	switch {
	case !oOK && !nOK:
		return
	case !oOK:
		add(pulumirpc.PropertyDiff_ADD)
		return
	case !nOK:
		add(pulumirpc.PropertyDiff_DELETE)
		return
	}

	o, oSecret, oUnknown := unwrap(ov)
	n, nSecret, nUnknown := unwrap(nv)
	if nUnknown || oUnknown {
		// An unknown value may or may not change: report a (possible) update.
		add(pulumirpc.PropertyDiff_UPDATE)
		return
	}
	if oSecret || nSecret {
		// Compare the plain values, but do not reveal the structure of a secret in the diff paths.
		if !valuesEqual(o, n) {
			add(pulumirpc.PropertyDiff_UPDATE)
		}
		return
	}
	switch {
	case o.IsObject() && n.IsObject():
		om, nm := o.ObjectValue(), n.ObjectValue()
		keys := map[resource.PropertyKey]bool{}
		for k := range om {
			keys[k] = true
		}
		for k := range nm {
			keys[k] = true
		}
		sorted := make([]string, 0, len(keys))
		for k := range keys {
			sorted = append(sorted, string(k))
		}
		sort.Strings(sorted)
		for _, ks := range sorted {
			k := resource.PropertyKey(ks)
			cov, coOK := present(om, k)
			cnv, cnOK := present(nm, k)
			diffValue(append(append(resource.PropertyPath{}, path...), ks), cov, coOK, cnv, cnOK, out)
		}
	case o.IsArray() && n.IsArray() && len(o.ArrayValue()) == len(n.ArrayValue()):
		oa, na := o.ArrayValue(), n.ArrayValue()
		for i := range oa {
			diffValue(append(append(resource.PropertyPath{}, path...), i), oa[i], true, na[i], true, out)
		}
	default:
		if !valuesEqual(o, n) {
			add(pulumirpc.PropertyDiff_UPDATE)
		}
	}
}

// valuesEqual compares two values ignoring secret markers. Unknown values are never equal.
func valuesEqual(a, b resource.PropertyValue) bool {
	a, aUnknown := deepUnwrap(a)
	b, bUnknown := deepUnwrap(b)
	if aUnknown || bUnknown {
		return false
	}
	return normalizeNulls(a).DeepEquals(normalizeNulls(b))
}

// normalizeNulls drops null-valued object keys, so that {k: null} equals {}.
func normalizeNulls(v resource.PropertyValue) resource.PropertyValue {
	switch {
	case v.IsObject():
		out := resource.PropertyMap{}
		for k, e := range v.ObjectValue() {
			if e.IsNull() {
				continue
			}
			out[k] = normalizeNulls(e)
		}
		return resource.NewObjectProperty(out)
	case v.IsArray():
		arr := v.ArrayValue()
		out := make([]resource.PropertyValue, len(arr))
		for i, e := range arr {
			out[i] = normalizeNulls(e)
		}
		return resource.NewArrayProperty(out)
	}
	return v
}
