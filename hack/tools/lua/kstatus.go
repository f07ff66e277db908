package main

import (
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type kstatusCase struct {
	Status    string `json:"status"`
	InputPath string `json:"inputPath"`
}

type kstatusTable struct {
	Tests []kstatusCase `json:"tests"`
}

// runKstatus computes each input's kstatus status with sigs.k8s.io/cli-utils — the library
// Flux's health checks use — and compares it with the table. Returns passed, failed.
func runKstatus(tablePath string) (int, int) {
	raw, err := os.ReadFile(tablePath)
	must(err)
	var table kstatusTable
	must(yaml.UnmarshalStrict(raw, &table))
	if len(table.Tests) == 0 {
		must(fmt.Errorf("%s has no tests", tablePath))
	}
	passed, failed := 0, 0
	for _, tc := range table.Tests {
		path := filepath.Join(filepath.Dir(tablePath), tc.InputPath)
		got, msg, err := kstatusOf(path)
		switch {
		case err != nil:
			failed++
			fmt.Printf("FAIL kstatus %s: %v\n", tc.InputPath, err)
		case got != tc.Status:
			failed++
			fmt.Printf("FAIL kstatus %s: want %s, got %s (%s)\n", tc.InputPath, tc.Status, got, msg)
		default:
			passed++
			fmt.Printf("ok   kstatus %s: %s (%s)\n", tc.InputPath, got, msg)
		}
	}
	return passed, failed
}

func kstatusOf(path string) (string, string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", "", err
	}
	// Through JSON into Unstructured, so integers are int64 as from the API server.
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return "", "", fmt.Errorf("parsing %s: %w", path, err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		return "", "", fmt.Errorf("parsing %s: %w", path, err)
	}
	res, err := status.Compute(u)
	if err != nil {
		return "", "", err
	}
	return res.Status.String(), res.Message, nil
}
