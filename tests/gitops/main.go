// Command gitops-driver runs Phasegate's Argo CD health check through Argo CD's own code:
// the Lua health path of github.com/argoproj/argo-cd/v3 (util/lua, what the application
// controller calls) and the sync engine Argo CD drives (gitops-engine: sync waves, dry run,
// kubectl apply, health gating between waves).
//
//	gitops-driver health <health.lua> <health_test.yaml>
//	gitops-driver sync --kubeconfig K --namespace NS --dir D --health-lua F [--timeout 60s]
//
// `health` runs each case of an Argo CD health_test.yaml table through
// lua.ResourceHealthOverrides.GetResourceHealth with the script installed as the
// resource.customizations.health.phasegate.dev_DatabaseMigration override, and prints one
// line per case and "N passed, M failed" (exit 1 on any failure).
//
// `sync` applies every manifest in D (a "git" directory) to namespace NS the way Argo CD's
// application controller runs one sync operation: each round reconciles the manifests with
// the live objects of a gitops-engine cluster cache, builds a sync context that carries the
// previous round's state (sync.WithInitialState), and calls Sync() — until the operation
// completes or the timeout passes. It prints one JSON object: the operation's phase
// (Succeeded, Failed, Error, or Running when it did not complete in time: a hung sync),
// message, the per-resource results, and for every resource the round it was applied in
// and the health of every resource at that moment.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	appv1 "github.com/argoproj/argo-cd/v3/pkg/apis/application/v1alpha1"
	"github.com/argoproj/argo-cd/v3/util/lua"
	"github.com/argoproj/gitops-engine/pkg/cache"
	"github.com/argoproj/gitops-engine/pkg/health"
	"github.com/argoproj/gitops-engine/pkg/sync"
	"github.com/argoproj/gitops-engine/pkg/sync/common"
	"github.com/argoproj/gitops-engine/pkg/utils/kube"
	"github.com/argoproj/gitops-engine/pkg/utils/tracing"
	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"
)

// The argocd-cm key Argo CD reads the check from is resource.customizations.health.<group>_<kind>;
// in the controller it becomes this override key (lua.GetConfigMapKey).
const overrideKey = "phasegate.dev/DatabaseMigration"

// Resources the driver manages carry this annotation (Argo CD uses its tracking label or
// annotation the same way).
const trackingAnnotation = "gitops-test.phasegate.dev/app"

func overrides(script string) lua.ResourceHealthOverrides {
	return lua.ResourceHealthOverrides{overrideKey: appv1.ResourceOverride{HealthLua: script}}
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "health":
		if len(os.Args) != 4 {
			usage()
		}
		os.Exit(runHealthTable(os.Args[2], os.Args[3]))
	case "sync":
		os.Exit(runSync(os.Args[2:]))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: gitops-driver health <health.lua> <health_test.yaml>\n       gitops-driver sync --kubeconfig K --namespace NS --dir D --health-lua F [--timeout 60s]")
	os.Exit(2)
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "gitops-driver:", err)
		os.Exit(2)
	}
}

// --- health table -------------------------------------------------------------------------

type healthCase struct {
	HealthStatus struct {
		Status  string `json:"status"`
		Message string `json:"message"`
	} `json:"healthStatus"`
	InputPath string `json:"inputPath"`
}

func runHealthTable(scriptPath, tablePath string) int {
	script, err := os.ReadFile(scriptPath)
	must(err)
	raw, err := os.ReadFile(tablePath)
	must(err)
	var table struct {
		Tests []healthCase `json:"tests"`
	}
	must(yaml.UnmarshalStrict(raw, &table))
	if len(table.Tests) == 0 {
		must(fmt.Errorf("%s has no tests", tablePath))
	}
	ov := overrides(string(script))
	passed, failed := 0, 0
	for _, tc := range table.Tests {
		obj, err := readObject(filepath.Join(filepath.Dir(tablePath), tc.InputPath))
		must(err)
		hs, err := ov.GetResourceHealth(obj)
		switch {
		case err != nil:
			failed++
			fmt.Printf("FAIL %s: %v\n", tc.InputPath, err)
		case hs == nil:
			failed++
			fmt.Printf("FAIL %s: Argo CD found no health check for %s\n", tc.InputPath, overrideKey)
		case string(hs.Status) != tc.HealthStatus.Status || hs.Message != tc.HealthStatus.Message:
			failed++
			fmt.Printf("FAIL %s:\n  want %s: %q\n  got  %s: %q\n", tc.InputPath, tc.HealthStatus.Status, tc.HealthStatus.Message, hs.Status, hs.Message)
		default:
			passed++
			fmt.Printf("ok   %s: %s: %s\n", tc.InputPath, hs.Status, hs.Message)
		}
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}

func readObject(path string) (*unstructured.Unstructured, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
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

// --- sync ---------------------------------------------------------------------------------

type resourceReport struct {
	Kind      string `json:"kind"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	HookPhase string `json:"hookPhase"`
	SyncPhase string `json:"syncPhase"`
	Message   string `json:"message"`
	Health    string `json:"health"`
	HealthMsg string `json:"healthMessage"`
}

type applyReport struct {
	Kind  string `json:"kind"`
	Name  string `json:"name"`
	Round int    `json:"round"`
	// Health of every managed resource ("Kind/name" -> "Status: message") in the round this
	// resource was applied.
	HealthAtApply map[string]string `json:"healthAtApply"`
}

type syncReport struct {
	Phase     string           `json:"phase"`
	Message   string           `json:"message"`
	Rounds    int              `json:"rounds"`
	Resources []resourceReport `json:"resources"`
	Applied   []applyReport    `json:"applied"`
}

func runSync(args []string) int {
	fs := flag.NewFlagSet("sync", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig")
	namespace := fs.String("namespace", "", "destination namespace")
	dir := fs.String("dir", "", "directory of manifests (the git path)")
	luaPath := fs.String("health-lua", "", "the health check to install for DatabaseMigration")
	timeout := fs.Duration("timeout", 60*time.Second, "give up (report Running) after this long")
	verbose := fs.Bool("v", false, "log gitops-engine to stderr")
	must(fs.Parse(args))
	if *namespace == "" || *dir == "" || *luaPath == "" {
		usage()
	}
	script, err := os.ReadFile(*luaPath)
	must(err)
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	must(err)
	config.QPS, config.Burst = 50, 100
	log := logr.Discard()
	if *verbose {
		log = logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}

	targets, err := readManifests(*dir, *namespace)
	must(err)
	app := *namespace
	clusterCache := cache.NewClusterCache(config,
		cache.SetNamespaces([]string{*namespace}),
		cache.SetLogr(log),
		cache.SetPopulateResourceInfoHandler(func(un *unstructured.Unstructured, _ bool) (any, bool) {
			mark := un.GetAnnotations()[trackingAnnotation]
			return mark, mark != ""
		}),
	)
	must(clusterCache.EnsureSynced())
	defer clusterCache.Invalidate()
	isManaged := func(r *cache.Resource) bool {
		mark, _ := r.Info.(string)
		return mark == app
	}
	kubectl := &kube.KubectlCmd{Log: log, Tracer: tracing.NopTracer{}}
	ov := overrides(string(script))

	updated := make(chan struct{}, 1)
	unsubscribe := clusterCache.OnResourceUpdated(func(_, _ *cache.Resource, _ map[kube.ResourceKey]*cache.Resource) {
		select {
		case updated <- struct{}{}:
		default:
		}
	})
	defer unsubscribe()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	report := syncReport{Phase: string(common.OperationRunning)}
	var (
		phase     common.OperationPhase
		message   string
		results   []common.ResourceSyncResult
		startedAt = metav1.Now()
		applied   = map[string]bool{}
	)
	for round := 1; ; round++ {
		report.Rounds = round
		// What Argo CD's controller does per reconcile of an app with a running operation
		// (controller/sync.go: SyncAppState): fresh live state, a new sync context that
		// resumes the operation, one Sync() call.
		managed, err := clusterCache.GetManagedLiveObjs(targets, isManaged)
		must(err)
		reconciled := sync.Reconcile(targets, managed, *namespace, clusterCache)
		opts := []sync.SyncOpt{
			sync.WithLogr(log),
			sync.WithHealthOverride(ov),
			sync.WithOperationSettings(false, false, false, false),
			sync.WithManifestValidation(true),
			sync.WithServerSideApply(true),
			sync.WithServerSideApplyManager("argocd-controller"),
		}
		if phase != "" {
			opts = append(opts, sync.WithInitialState(phase, message, results, startedAt))
		}
		syncCtx, cleanup, err := sync.NewSyncContext("git", reconciled, config, config, kubectl, *namespace, clusterCache.GetOpenAPISchema(), opts...)
		must(err)
		syncCtx.Sync()
		phase, message, results = syncCtx.GetState()
		cleanup()

		healthNow := map[string]string{}
		for _, t := range targets {
			key := kube.GetResourceKey(t)
			hs := healthOf(clusterCache, ov, key)
			healthNow[t.GetKind()+"/"+t.GetName()] = hs
		}
		for _, r := range results {
			k := r.ResourceKey.Kind + "/" + r.ResourceKey.Name
			if !applied[k] && r.Status == common.ResultCodeSynced {
				applied[k] = true
				report.Applied = append(report.Applied, applyReport{Kind: r.ResourceKey.Kind, Name: r.ResourceKey.Name, Round: round, HealthAtApply: healthNow})
			}
		}
		if phase.Completed() {
			report.Phase = string(phase)
			report.Message = message
			break
		}
		select {
		case <-ctx.Done():
			report.Phase = string(common.OperationRunning)
			report.Message = fmt.Sprintf("still running after %s: %s", *timeout, message)
		case <-updated:
			continue
		case <-time.After(time.Second):
			continue
		}
		break
	}
	for _, r := range results {
		rr := resourceReport{
			Kind: r.ResourceKey.Kind, Name: r.ResourceKey.Name, Status: string(r.Status),
			HookPhase: string(r.HookPhase), SyncPhase: string(r.SyncPhase), Message: r.Message,
		}
		hs := healthOf(clusterCache, ov, r.ResourceKey)
		rr.Health, rr.HealthMsg, _ = strings.Cut(hs, ": ")
		report.Resources = append(report.Resources, rr)
	}
	sort.Slice(report.Resources, func(i, j int) bool {
		return report.Resources[i].Kind+report.Resources[i].Name < report.Resources[j].Kind+report.Resources[j].Name
	})
	out, err := json.MarshalIndent(report, "", "  ")
	must(err)
	fmt.Println(string(out))
	return 0
}

// healthOf is the resource's health as Argo CD computes it (built-in checks, or the override).
func healthOf(c cache.ClusterCache, ov lua.ResourceHealthOverrides, key kube.ResourceKey) string {
	var live *unstructured.Unstructured
	if r, ok := c.FindResources(key.Namespace, func(r *cache.Resource) bool { return r.ResourceKey() == key })[key]; ok {
		live = r.Resource
	}
	if live == nil {
		return "Missing: "
	}
	hs, err := health.GetResourceHealth(live, ov)
	if err != nil {
		return "Unknown: " + err.Error()
	}
	if hs == nil {
		return "None: "
	}
	return string(hs.Status) + ": " + hs.Message
}

// readManifests reads every YAML file of dir (multi-document allowed), sets the namespace and
// the tracking annotation.
func readManifests(dir, namespace string) ([]*unstructured.Unstructured, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var res []*unstructured.Unstructured
	for _, e := range entries {
		if e.IsDir() || !(strings.HasSuffix(e.Name(), ".yaml") || strings.HasSuffix(e.Name(), ".yml")) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		items, err := kube.SplitYAML(data)
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %w", e.Name(), err)
		}
		res = append(res, items...)
	}
	for _, u := range res {
		u.SetNamespace(namespace)
		a := u.GetAnnotations()
		if a == nil {
			a = map[string]string{}
		}
		a[trackingAnnotation] = namespace
		u.SetAnnotations(a)
	}
	return res, nil
}
