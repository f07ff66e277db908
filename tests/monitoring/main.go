// Command monitoring-check checks the chart's alert rules and Grafana dashboard against
// Prometheus' own PromQL parser and the operator's metrics (hack/monitoring-test.sh):
//
//	monitoring-check -names tests/data/metric-names.txt -dashboard dashboards/phasegate.json \
//	    -rendered rendered.yaml -rules-out rules.yaml
//
// It parses every dashboard query and every rule expression, fails on a query that does
// not parse or a metric name the operator does not export (the list a Rust unit test keeps
// equal to what src/metrics.rs registers), and writes the rendered PrometheusRule's groups
// as a plain rule file for `promtool test rules`.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

// A query and where it came from, for the error message.
type query struct {
	where, expr string
}

func main() {
	names := flag.String("names", "", "file of exported metric names, one a line")
	dashboard := flag.String("dashboard", "", "Grafana dashboard JSON")
	rendered := flag.String("rendered", "", "helm template output holding one PrometheusRule")
	rulesOut := flag.String("rules-out", "", "where to write the PrometheusRule's groups")
	flag.Parse()
	if err := run(*names, *dashboard, *rendered, *rulesOut); err != nil {
		fmt.Fprintln(os.Stderr, "monitoring-check:", err)
		os.Exit(1)
	}
}

func run(namesFile, dashboardFile, renderedFile, rulesOut string) error {
	exported, err := readNames(namesFile)
	if err != nil {
		return err
	}
	dq, err := dashboardQueries(dashboardFile)
	if err != nil {
		return err
	}
	groups, rq, err := ruleQueries(renderedFile)
	if err != nil {
		return err
	}
	var problems []string
	for _, q := range append(dq, rq...) {
		problems = append(problems, check(q, exported)...)
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "\n"))
	}
	out, err := yaml.Marshal(map[string]any{"groups": groups})
	if err != nil {
		return err
	}
	if err := os.WriteFile(rulesOut, out, 0o644); err != nil {
		return err
	}
	fmt.Printf("%d dashboard queries and %d rule expressions parse and use only exported metrics\n", len(dq), len(rq))
	return nil
}

func readNames(path string) (map[string]bool, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, l := range strings.Fields(string(raw)) {
		names[l] = true
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s lists no metric", path)
	}
	return names, nil
}

// check parses one query and names the metrics it selects that the operator does not export.
func check(q query, exported map[string]bool) []string {
	// Default options: what a Prometheus without feature flags accepts.
	expr, err := parser.NewParser(parser.Options{}).ParseExpr(q.expr)
	if err != nil {
		return []string{fmt.Sprintf("%s: does not parse: %v\n  %s", q.where, err, q.expr)}
	}
	var problems []string
	selectors := 0
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		vs, ok := node.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		selectors++
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == "__name__" {
				name = m.Value
			}
		}
		if !exported[name] {
			problems = append(problems, fmt.Sprintf("%s: metric %q is not exported by the operator", q.where, name))
		}
		return nil
	})
	if selectors == 0 {
		problems = append(problems, fmt.Sprintf("%s: selects no metric: %s", q.where, q.expr))
	}
	return problems
}

// Grafana's variables, as Grafana substitutes them before a query reaches Prometheus:
// interval variables become a duration, the others a regex matching every value.
var grafanaVar = regexp.MustCompile(`\$\{?(__[a-z_]+|[A-Za-z_][A-Za-z0-9_]*)(:[a-z]+)?\}?`)
var labelValues = regexp.MustCompile(`^label_values\((.+),\s*[A-Za-z_][A-Za-z0-9_]*\)$`)

func substitute(expr string) string {
	return grafanaVar.ReplaceAllStringFunc(expr, func(v string) string {
		if strings.Contains(v, "__") && (strings.Contains(v, "interval") || strings.Contains(v, "range")) {
			return "5m"
		}
		return ".*"
	})
}

type dashboard struct {
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

func dashboardQueries(path string) ([]query, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var qs []query
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, t := range p.Targets {
				where := fmt.Sprintf("dashboard panel %q query %s", p.Title, t.RefID)
				qs = append(qs, query{where, substitute(t.Expr)})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			return nil, fmt.Errorf("variable %s: %w", v.Name, err)
		}
		m := labelValues.FindStringSubmatch(strings.TrimSpace(q.Query))
		if m == nil {
			return nil, fmt.Errorf("variable %s: expected label_values(<selector>, <label>), got %q", v.Name, q.Query)
		}
		qs = append(qs, query{fmt.Sprintf("dashboard variable %s", v.Name), substitute(m[1])})
	}
	if len(qs) == 0 {
		return nil, fmt.Errorf("%s: no queries", path)
	}
	return qs, nil
}

type ruleGroup struct {
	Name  string           `json:"name"`
	Rules []map[string]any `json:"rules"`
}

// ruleQueries finds the PrometheusRule among the rendered documents.
func ruleQueries(path string) ([]ruleGroup, []query, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var found []ruleGroup
	for _, doc := range splitDocs(raw) {
		var obj struct {
			Kind string `json:"kind"`
			Spec struct {
				Groups []ruleGroup `json:"groups"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		if obj.Kind == "PrometheusRule" {
			if found != nil {
				return nil, nil, fmt.Errorf("%s: more than one PrometheusRule", path)
			}
			found = obj.Spec.Groups
		}
	}
	if found == nil {
		return nil, nil, fmt.Errorf("%s: no PrometheusRule", path)
	}
	var qs []query
	for _, g := range found {
		for i, r := range g.Rules {
			name, _ := r["alert"].(string)
			expr, _ := r["expr"].(string)
			qs = append(qs, query{fmt.Sprintf("rule %s[%d] %s", g.Name, i, name), expr})
		}
	}
	return found, qs, nil
}

func splitDocs(raw []byte) [][]byte {
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(raw), -1) {
		if strings.TrimSpace(d) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}
