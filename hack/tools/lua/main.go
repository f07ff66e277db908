// Command lua-health-test runs an Argo CD health check written in Lua against a test table in
// Argo CD's health_test.yaml format, with gopher-lua, the interpreter Argo CD embeds.
//
//	go run . <health.lua> <health_test.yaml>
//
// Each case's inputPath is relative to the test table. The object is exposed to the script
// as the global `obj`, as Argo CD does; the script must return a table with `status` (one of
// Argo CD's health statuses) and `message`. Prints one line per case and, last,
// "N passed, M failed"; exits 1 if any case failed.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

type testCase struct {
	HealthStatus struct {
		Status  string `json:"status"`
		Message string `json:"message"`
	} `json:"healthStatus"`
	InputPath string `json:"inputPath"`
}

type testTable struct {
	Tests []testCase `json:"tests"`
}

// The statuses Argo CD accepts from a health script.
var validStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true, "Suspended": true, "Missing": true, "Unknown": true,
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: lua-health-test <health.lua> <health_test.yaml>")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	must(err)
	raw, err := os.ReadFile(os.Args[2])
	must(err)
	var table testTable
	must(yaml.UnmarshalStrict(raw, &table))
	if len(table.Tests) == 0 {
		must(fmt.Errorf("%s has no tests", os.Args[2]))
	}
	dir := filepath.Dir(os.Args[2])
	passed, failed := 0, 0
	for _, tc := range table.Tests {
		status, message, err := run(string(script), filepath.Join(dir, tc.InputPath))
		switch {
		case err != nil:
			failed++
			fmt.Printf("FAIL %s: %v\n", tc.InputPath, err)
		case !validStatuses[status]:
			failed++
			fmt.Printf("FAIL %s: %q is not an Argo CD health status\n", tc.InputPath, status)
		case status != tc.HealthStatus.Status || message != tc.HealthStatus.Message:
			failed++
			fmt.Printf("FAIL %s:\n  want %s: %q\n  got  %s: %q\n", tc.InputPath, tc.HealthStatus.Status, tc.HealthStatus.Message, status, message)
		default:
			passed++
			fmt.Printf("ok   %s: %s: %s\n", tc.InputPath, status, message)
		}
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}

func run(script, inputPath string) (string, string, error) {
	raw, err := os.ReadFile(inputPath)
	if err != nil {
		return "", "", err
	}
	var obj map[string]any
	if err := yaml.Unmarshal(raw, &obj); err != nil {
		return "", "", fmt.Errorf("parsing %s: %w", inputPath, err)
	}
	// Like Argo CD: no os/io/debug libraries, only the safe standard ones.
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}, {lua.StringLibName, lua.OpenString}, {lua.MathLibName, lua.OpenMath}} {
		l.Push(l.NewFunction(lib.fn))
		l.Push(lua.LString(lib.name))
		l.Call(1, 0)
	}
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return "", "", fmt.Errorf("script error: %w", err)
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("script returned %s, not a table", l.Get(-1).Type())
	}
	status, _ := ret.RawGetString("status").(lua.LString)
	message := ret.RawGetString("message")
	msg := ""
	if message != lua.LNil {
		s, ok := message.(lua.LString)
		if !ok {
			return "", "", fmt.Errorf("message is a %s, not a string", message.Type())
		}
		msg = string(s)
	}
	return string(status), msg, nil
}

// toLua converts a decoded JSON value to Lua the way Argo CD does: objects and arrays
// become tables, numbers LNumber, null nil.
func toLua(l *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case []any:
		t := l.NewTable()
		for _, e := range v {
			t.Append(toLua(l, e))
		}
		return t
	case map[string]any:
		t := l.NewTable()
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			t.RawSetString(k, toLua(l, v[k]))
		}
		return t
	default:
		return lua.LString(fmt.Sprint(v))
	}
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(2)
	}
}
