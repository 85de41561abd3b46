package reconfigure

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/template"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/atomicfile"
	"github.com/consul-rehydrate/consul-rehydrate/internal/reconfigure/tmplfunc"
)

// Data is what a template renders.
type Data struct {
	Service string
	// Instances are the healthy ones Screen let through, sorted by node, then ID.
	Instances []Instance
}

// Instance is one healthy instance of the service.
type Instance struct {
	Node       string
	Address    string // the service's address, else its node's
	Port       int
	ID         string
	Tags       []string
	Meta       map[string]string
	NodeMeta   map[string]string
	Datacenter string
}

// Key names an instance in the state and in notes: node/service-id.
func (i Instance) Key() string { return i.Node + "/" + i.ID }

// Healthy returns the entries whose every check (the node's and the service's)
// passes, as template instances.
func Healthy(entries []*api.ServiceEntry) []Instance {
	var out []Instance
	for _, e := range entries {
		if e.Node == nil || e.Service == nil || e.Checks.AggregatedStatus() != api.HealthPassing {
			continue
		}
		addr := e.Service.Address
		if addr == "" {
			addr = e.Node.Address
		}
		out = append(out, Instance{
			Node: e.Node.Node, Address: addr, Port: e.Service.Port, ID: e.Service.ID,
			Tags: e.Service.Tags, Meta: e.Service.Meta, NodeMeta: e.Node.Meta, Datacenter: e.Node.Datacenter,
		})
	}
	slices.SortFunc(out, func(a, b Instance) int {
		return cmp.Or(strings.Compare(a.Node, b.Node), strings.Compare(a.ID, b.ID))
	})
	return out
}

// Render executes the block's template over data, with the functions of tmplfunc.
//
// A meta key an instance does not have is "": {{ .Meta.weight }} renders as
// {{ index .Meta "weight" }} does (text/template's index returns the zero value for
// a missing map key; missingkey=zero makes the field syntax do the same). With
// missingkey=error, one instance registered without the key failed the whole
// render, so anyone who may register the service could freeze the file for every
// other instance; a template that needs a key tests it: {{ with .Meta.weight }}.
// A misspelt field (.Adress) is still an error: missingkey applies to map keys only.
func Render(rc *config.ReconfigureConfig, data Data) ([]byte, error) {
	t, err := template.New(rc.TemplateName()).Funcs(tmplfunc.Funcs()).Option("missingkey=zero").Parse(rc.Template)
	if err != nil {
		return nil, fmt.Errorf("parse template: %w", err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, data); err != nil {
		return nil, fmt.Errorf("render template: %w", err)
	}
	return b.Bytes(), nil
}

// current returns the file's content and mode; ok is false when it does not exist.
func current(path string) (content []byte, mode fs.FileMode, ok bool, err error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, err
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, false, fmt.Errorf("%s is not a regular file", path)
	}
	b, err := os.ReadFile(path)
	return b, fi.Mode().Perm(), true, err
}

// loadState reads the state file; a missing file is the zero State.
func loadState(path string) (State, error) {
	var s State
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, fmt.Errorf("decode state %s: %w", path, err)
	}
	return s, nil
}

func saveState(path string, s State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	return atomicfile.Write(path, append(b, '\n'), 0)
}
