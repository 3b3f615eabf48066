// helm-render renders a Helm chart the way `helm template` does, for tests on hosts where the
// helm binary cannot be installed (it is not in Debian, PyPI or npm, and nothing else is
// reachable here). It uses the same engine Helm 3 uses: Go's text/template with Sprig v3
// (Debian's golang-github-masterminds-sprig-dev, the version Helm pins) and Helm's own
// additions: include, tpl, required, toYaml, fromYaml, toJson, lookup (always empty, as in
// `helm template`), .Files.Get, .Capabilities and .Release.
//
// Any template that fails to parse or execute is an error (exit 1), so a chart that helm
// would refuse cannot pass the tests. Differences from helm, on purpose: no subcharts, no
// schema validation of values (the tests validate the rendered objects instead).
//
// Build: GO111MODULE=off GOPATH=/usr/share/gocode go build -o helm-render ./deploy/helm/render
// Use:   helm-render CHART_DIR [-f values.yaml]... [--set a.b=c]... [--namespace NS] [--name NAME]
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

type files struct{ root string }

// Get returns a chart file's contents, or "" when absent (as Helm does).
func (f files) Get(name string) string {
	b, err := os.ReadFile(filepath.Join(f.root, name))
	if err != nil {
		return ""
	}
	return string(b)
}

type apiVersions []string

func (a apiVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "helm-render:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 1 {
		return fmt.Errorf("usage: helm-render CHART_DIR [-f values.yaml]... [--set a.b=c]...")
	}
	chartDir := args[0]
	name, namespace := "tollgate", "default"
	var valueFiles, sets []string
	for i := 1; i < len(args); i++ {
		need := func() (string, error) {
			if i+1 >= len(args) {
				return "", fmt.Errorf("%s needs a value", args[i])
			}
			i++
			return args[i], nil
		}
		var err error
		var v string
		switch args[i] {
		case "-f", "--values":
			v, err = need()
			valueFiles = append(valueFiles, v)
		case "--set":
			v, err = need()
			sets = append(sets, v)
		case "--namespace", "-n":
			namespace, err = need()
		case "--name":
			name, err = need()
		default:
			err = fmt.Errorf("unknown argument %q", args[i])
		}
		if err != nil {
			return err
		}
	}

	chart := map[string]interface{}{}
	if err := readYAML(filepath.Join(chartDir, "Chart.yaml"), &chart); err != nil {
		return err
	}
	values := map[string]interface{}{}
	if err := readYAML(filepath.Join(chartDir, "values.yaml"), &values); err != nil {
		return err
	}
	for _, f := range valueFiles {
		over := map[string]interface{}{}
		if err := readYAML(f, &over); err != nil {
			return err
		}
		merge(values, over)
	}
	for _, s := range sets {
		if err := set(values, s); err != nil {
			return err
		}
	}

	chartName, _ := chart["name"].(string)
	top := map[string]interface{}{
		"Values": values,
		"Release": map[string]interface{}{
			"Name": name, "Namespace": namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Chart": map[string]interface{}{
			"Name": chartName, "Version": chart["version"], "AppVersion": chart["appVersion"],
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{"Version": "v1.30.0", "Major": "1", "Minor": "30"},
			"APIVersions": apiVersions{"v1", "apps/v1", "monitoring.coreos.com/v1"},
		},
		"Files": files{root: chartDir},
	}

	paths, err := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	if err != nil {
		return err
	}
	sort.Strings(paths)
	t := template.New("chart")
	funcs := sprig.TxtFuncMap()
	// Helm removes these so a chart cannot read the renderer's environment.
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["required"] = required
	funcs["lookup"] = func(string, string, string, string) map[string]interface{} {
		return map[string]interface{}{}
	}
	funcs["include"] = func(string, interface{}) (string, error) { return "", nil }
	funcs["tpl"] = func(string, interface{}) (string, error) { return "", nil }
	t.Funcs(funcs)
	// include and tpl need the parsed template set, so they are bound after parsing.
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := t.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		c, err := t.Clone()
		if err != nil {
			return "", err
		}
		x, err := c.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = x.Execute(&buf, data)
		return buf.String(), err
	}
	t.Funcs(funcs)
	t.Option("missingkey=zero")

	var rendered []string
	for _, p := range paths {
		base := filepath.Base(p)
		if base == "NOTES.txt" {
			continue
		}
		text, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel := filepath.Join(chartName, "templates", base)
		if _, err := t.New(rel).Parse(string(text)); err != nil {
			return fmt.Errorf("parsing %s: %w", rel, err)
		}
		if !strings.HasPrefix(base, "_") {
			rendered = append(rendered, rel)
		}
	}
	var out bytes.Buffer
	for _, rel := range rendered {
		var buf bytes.Buffer
		top["Template"] = map[string]interface{}{"Name": rel, "BasePath": filepath.Join(chartName, "templates")}
		if err := t.ExecuteTemplate(&buf, rel, top); err != nil {
			return fmt.Errorf("rendering %s: %w", rel, err)
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		for _, doc := range strings.Split(text, "\n---") {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", rel, strings.Trim(doc, "\n"))
		}
	}
	_, err = os.Stdout.Write(out.Bytes())
	return err
}

func stripComments(doc string) string {
	var keep []string
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func readYAML(path string, into *map[string]interface{}) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(b, into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if *into == nil {
		*into = map[string]interface{}{}
	}
	return nil
}

// merge overlays `over` onto `base`, recursing into maps, as helm does for -f files.
func merge(base, over map[string]interface{}) {
	for k, v := range over {
		if vm, ok := v.(map[string]interface{}); ok {
			if bm, ok := base[k].(map[string]interface{}); ok {
				merge(bm, vm)
				continue
			}
		}
		base[k] = v
	}
}

// set applies one --set a.b.c=value; the value is read as a YAML scalar (true, 3, text).
func set(values map[string]interface{}, s string) error {
	eq := strings.IndexByte(s, '=')
	if eq <= 0 {
		return fmt.Errorf("--set %q: want key=value", s)
	}
	var v interface{}
	if err := yaml.Unmarshal([]byte(s[eq+1:]), &v); err != nil {
		return fmt.Errorf("--set %q: %w", s, err)
	}
	keys := strings.Split(s[:eq], ".")
	m := values
	for _, k := range keys[:len(keys)-1] {
		next, ok := m[k].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			m[k] = next
		}
		m = next
	}
	m[keys[len(keys)-1]] = v
	return nil
}

func toYAML(v interface{}) string {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

func fromYAML(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func required(msg string, v interface{}) (interface{}, error) {
	if v == nil {
		return nil, fmt.Errorf("%s", msg)
	}
	if s, ok := v.(string); ok && s == "" {
		return nil, fmt.Errorf("%s", msg)
	}
	return v, nil
}
