// Command flux-driver checks a DatabaseMigration's health the ways Flux computes it:
//
//   - kstatus, with sigs.k8s.io/cli-utils and with Flux's fork github.com/fluxcd/cli-utils
//     (what a Kustomization's healthChecks and wait use for custom resources);
//
//   - the healthCheckExprs shipped in deploy/flux/kustomizations.yaml, evaluated by Flux's own
//     github.com/fluxcd/pkg/runtime/cel StatusEvaluator (cel-go, the code kustomize-controller
//     runs: the built-in observedGeneration check, then inProgress, failed, current).
//
//     flux-driver <kustomizations.yaml> <kstatus_test.yaml>
//
// Each case of the table names an input object and the expected results; the tool prints one
// line per case and "N passed, M failed", and exits 1 on any failure.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	fluxstatus "github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/pkg/apis/kustomize"
	"github.com/fluxcd/pkg/runtime/cel"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type testCase struct {
	InputPath string `json:"inputPath"`
	// kstatus (both libraries): InProgress, Current, Failed, ...
	Kstatus string `json:"kstatus"`
	// The shipped healthCheckExprs: InProgress, Current, Failed, or Error.
	HealthCheckExprs string `json:"healthCheckExprs"`
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: flux-driver <kustomizations.yaml> <kstatus_test.yaml>")
		os.Exit(2)
	}
	exprs := shippedExprs(os.Args[1])
	evaluator, err := cel.NewStatusEvaluator(&exprs)
	must(err)
	raw, err := os.ReadFile(os.Args[2])
	must(err)
	var table struct {
		Tests []testCase `json:"tests"`
	}
	must(yaml.UnmarshalStrict(raw, &table))
	if len(table.Tests) == 0 {
		must(fmt.Errorf("%s has no tests", os.Args[2]))
	}
	passed, failed := 0, 0
	for _, tc := range table.Tests {
		u, err := readObject(filepath.Join(filepath.Dir(os.Args[2]), tc.InputPath))
		must(err)
		var problems []string
		ks, err := status.Compute(u)
		must(err)
		if ks.Status.String() != tc.Kstatus {
			problems = append(problems, fmt.Sprintf("kstatus: want %s, got %s (%s)", tc.Kstatus, ks.Status, ks.Message))
		}
		fks, err := fluxstatus.Compute(u)
		must(err)
		if fks.Status.String() != tc.Kstatus {
			problems = append(problems, fmt.Sprintf("kstatus (fluxcd/cli-utils): want %s, got %s (%s)", tc.Kstatus, fks.Status, fks.Message))
		}
		got := "Error"
		var evalErr error
		if res, err := evaluator.Evaluate(context.Background(), u); err == nil {
			got = res.Status.String()
		} else {
			evalErr = err
		}
		if got != tc.HealthCheckExprs {
			problems = append(problems, fmt.Sprintf("healthCheckExprs: want %s, got %s (%v)", tc.HealthCheckExprs, got, evalErr))
		}
		if len(problems) > 0 {
			failed++
			fmt.Printf("FAIL %s:\n  %s\n", tc.InputPath, strings.Join(problems, "\n  "))
			continue
		}
		passed++
		detail := ""
		if evalErr != nil {
			detail = fmt.Sprintf(" (%v)", evalErr)
		}
		fmt.Printf("ok   %s: kstatus %s; healthCheckExprs %s%s\n", tc.InputPath, ks.Status, got, detail)
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}

// shippedExprs reads the healthCheckExprs entry for DatabaseMigration from the Kustomizations.
func shippedExprs(path string) kustomize.HealthCheckExpressions {
	raw, err := os.ReadFile(path)
	must(err)
	var found []kustomize.HealthCheckExpressions
	for _, doc := range strings.Split(string(raw), "\n---") {
		var k struct {
			Kind string `json:"kind"`
			Spec struct {
				HealthCheckExprs []kustomize.CustomHealthCheck `json:"healthCheckExprs"`
			} `json:"spec"`
		}
		must(yaml.Unmarshal([]byte(doc), &k))
		for _, e := range k.Spec.HealthCheckExprs {
			if e.Kind == "DatabaseMigration" && e.APIVersion == "phasegate.dev/v1alpha1" {
				found = append(found, e.HealthCheckExpressions)
			}
		}
	}
	if len(found) != 1 {
		must(fmt.Errorf("%s: want one healthCheckExprs entry for phasegate.dev/v1alpha1 DatabaseMigration, found %d", path, len(found)))
	}
	return found[0]
}

func readObject(path string) (*unstructured.Unstructured, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	// Through JSON into Unstructured, so integers are int64 as from the API server.
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	return u, nil
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "flux-driver:", err)
		os.Exit(2)
	}
}
