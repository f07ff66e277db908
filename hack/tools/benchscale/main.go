// benchscale drives one run of `make bench-scale` (hack/bench-scale.sh) against a kwok
// cluster: it creates N Deployments x R replicas and M DatabaseMigrations (5 named targets
// each), starts the operator behind a counting proxy, waits for every migration to reach
// AwaitingRollout, rolls out a new version on every Deployment and waits for every
// migration to finish, measuring the operator's memory, CPU, API requests and reaction time.
//
//	benchscale run    --kubeconfig K --operator BIN --out run.json [sizes]
//	benchscale report [--baseline base.json] current.json
//
// Executor pods do not run: kwok ignores pods labelled phasegate.dev/executor (see
// hack/kwok/stages.yaml) and this helper marks them Succeeded (exit code 0) as soon as they
// are scheduled, so expand and contract Jobs complete without a database.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	versionLabel  = "app.kubernetes.io/version"
	appLabel      = "app"
	executorLabel = "phasegate.dev/executor"
	phaseLabel    = "phasegate.dev/phase"
	uidLabel      = "phasegate.dev/migration-uid"
)

var dbmGVR = schema.GroupVersionResource{Group: "phasegate.dev", Version: "v1alpha1", Resource: "databasemigrations"}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "[benchscale %s] %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, a...))
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchscale run|report ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = cmdRun(os.Args[2:])
	case "report":
		err = cmdReport(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		logf("ERROR: %v", err)
		os.Exit(1)
	}
}

type opts struct {
	kubeconfig, operator, operatorLog, out, label, ns   string
	deployments, replicas, migrations, targets, workers int
	wave                                                int // Deployments the wave rolls (0: all)
	readyTimeout, startupTimeout, waveTimeout, idle     time.Duration
	oldVersion, newVersion                              string
}

// Result is what one run measured (written as JSON, read by `report`).
type Result struct {
	Label       string `json:"label"`
	Operator    string `json:"operator"`
	Deployments int    `json:"deployments"`
	Replicas    int    `json:"replicas"`
	Pods        int    `json:"pods"`
	Migrations  int    `json:"migrations"`
	Load        string `json:"load"` // /proc/loadavg at the start and end of the wave

	StartupSeconds  float64 `json:"startup_seconds"` // operator start -> all AwaitingRollout
	StartupOK       bool    `json:"startup_ok"`
	WaveSeconds     float64 `json:"wave_seconds"`     // first rollout patch -> all finished (or timeout)
	WaveDeployments int     `json:"wave_deployments"` // Deployments rolled (all unless --wave)
	WaveMigrations  int     `json:"wave_migrations"`  // migrations whose targets all rolled
	WaveOK          bool    `json:"wave_ok"`
	Succeeded       int     `json:"succeeded"`
	Failed          int     `json:"failed"`

	RSSPeakMiB      float64 `json:"rss_peak_mib"`     // VmHWM at the end
	RSSStartupMiB   float64 `json:"rss_startup_mib"`  // max VmRSS sampled during startup
	RSSSteadyMiB    float64 `json:"rss_steady_mib"`   // mean VmRSS in the idle window before the wave
	RSSEndMiB       float64 `json:"rss_end_mib"`      // VmRSS after the wave
	CPUStartup      float64 `json:"cpu_startup_s"`    // utime+stime during startup
	CPUIdle         float64 `json:"cpu_idle_s"`       // during the idle window
	IdleSeconds     float64 `json:"idle_seconds"`     // its length
	CPUWave         float64 `json:"cpu_wave_s"`       // during the wave
	CPUTotal        float64 `json:"cpu_total_s"`      // over the operator's life
	ShutdownSeconds float64 `json:"shutdown_seconds"` // SIGTERM -> exit (-1: killed after 60 s)

	OperatorWave    []ReqCount `json:"operator_requests_wave"`            // at the proxy, during the wave
	PeakReqPerSec   int64      `json:"operator_peak_requests_per_second"` // busiest second of the wave
	OperatorStartup []ReqCount `json:"operator_requests_startup"`         // operator start -> AwaitingRollout
	OperatorIdle    []ReqCount `json:"operator_requests_idle"`
	APIServerWave   []APICount `json:"apiserver_requests_wave"` // apiserver_request_total delta, all clients
	StatusWrites    int64      `json:"status_writes"`           // databasemigrations/status PATCH+PUT during the wave (apiserver)
	StatusWritesAll int64      `json:"status_writes_total"`     // same, over the operator's life

	ReactionsMs []float64 `json:"reactions_ms"` // sorted; last target complete -> contract Job ADDED
	// From the operator's "started Job" log lines for contract (sorted): the deciding
	// reconcile's duration and the quorum read inside it; reaction minus that reconcile is
	// the wait for the watch event and for a free reconcile slot.
	GateReconcileMs   []float64 `json:"gate_reconcile_ms,omitempty"`
	GateQuorumMs      []float64 `json:"gate_quorum_read_ms,omitempty"`
	GateWaitMs        []float64 `json:"gate_wait_ms,omitempty"` // reaction - gate reconcile, per migration
	NoContractJob     int       `json:"no_contract_job"`
	TargetsIncomplete int       `json:"targets_incomplete"` // migrations whose targets never completed (as seen here)
	ExecutorPods      int       `json:"executor_pods_completed"`
	// Executor Jobs beyond one per migration and phase. No executor fails here, so each is
	// an attempt started beside a running one (should be 0).
	ExtraJobs int `json:"extra_jobs"`
}

func cmdRun(args []string) error {
	var o opts
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	fs.StringVar(&o.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "admin kubeconfig of the bench cluster")
	fs.StringVar(&o.operator, "operator", "", "phasegate binary")
	fs.StringVar(&o.operatorLog, "operator-log", "", "operator log file (default: next to --out)")
	fs.StringVar(&o.out, "out", "run.json", "result file")
	fs.StringVar(&o.label, "label", "current", "name of this run in the report")
	fs.StringVar(&o.ns, "namespace", "bench", "namespace for everything")
	fs.IntVar(&o.deployments, "deployments", 200, "")
	fs.IntVar(&o.replicas, "replicas", 2, "")
	fs.IntVar(&o.migrations, "migrations", 40, "")
	fs.IntVar(&o.targets, "targets", 5, "Deployments per migration")
	fs.IntVar(&o.workers, "workers", 16, "parallel creates/patches")
	fs.IntVar(&o.wave, "wave", 0, "roll only the first N Deployments (0: all); only migrations whose targets all roll are waited for and measured")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 20*time.Minute, "")
	fs.DurationVar(&o.startupTimeout, "startup-timeout", 15*time.Minute, "")
	fs.DurationVar(&o.waveTimeout, "wave-timeout", 20*time.Minute, "")
	fs.DurationVar(&o.idle, "idle", 20*time.Second, "idle window before the wave (steady RSS, idle CPU)")
	fs.StringVar(&o.oldVersion, "old-version", "1.0.0", "")
	fs.StringVar(&o.newVersion, "new-version", "2.0.0", "")
	_ = fs.Parse(args)
	if o.operator == "" {
		return fmt.Errorf("--operator is required")
	}
	if o.operatorLog == "" {
		o.operatorLog = o.out + ".operator.log"
	}
	return run(o)
}

// ---------------------------------------------------------------- observed state

type state struct {
	mu        sync.Mutex
	newVer    string
	depOK     map[string]bool                // rolled out per the Deployment's status
	oldPods   map[string]map[string]struct{} // Deployment -> its pods not at newVer
	complete  map[string]time.Time           // first time depOK && no old pods
	ready     map[string]bool                // before the wave: all replicas available
	phases    map[string]string              // migration -> status.phase
	uids      map[string]string              // migration uid -> name
	contract  map[string]time.Time           // migration uid -> contract Job ADDED seen
	executors map[string]bool                // executor pod uids handled
	jobs      map[string]int                 // "migration uid/phase" -> executor Jobs created
	execDone  int
	waveOn    bool
}

func (s *state) countPhase(p string) int {
	n := 0
	for _, v := range s.phases {
		if v == p {
			n++
		}
	}
	return n
}

func (s *state) checkComplete(dep string, now time.Time) {
	if !s.waveOn || !s.depOK[dep] || len(s.oldPods[dep]) > 0 {
		return
	}
	if _, done := s.complete[dep]; !done {
		s.complete[dep] = now
	}
}

func run(o opts) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 300, 600
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	res := Result{Label: o.label, Operator: o.operator, Deployments: o.deployments, Replicas: o.replicas,
		Pods: o.deployments * o.replicas, Migrations: o.migrations}

	// Namespace and the database Secret: one key per migration, so that no two migrations
	// share a database (migrations on one database keep their order in its ledger, which
	// needs executors that really run; make bench-order measures that).
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: o.ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bench-db", Namespace: o.ns}, StringData: map[string]string{}}
	for i := 0; i < o.migrations; i++ {
		secret.StringData[fmt.Sprintf("db-%05d", i)] = fmt.Sprintf("postgres://bench:bench@127.0.0.1:1/db%d", i)
	}
	if _, err = cs.CoreV1().Secrets(o.ns).Create(ctx, secret, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}

	st := &state{newVer: o.newVersion, depOK: map[string]bool{}, oldPods: map[string]map[string]struct{}{},
		complete: map[string]time.Time{}, ready: map[string]bool{}, phases: map[string]string{},
		uids: map[string]string{}, contract: map[string]time.Time{}, executors: map[string]bool{}, jobs: map[string]int{}}

	// Executor pods: marked Succeeded by a few workers.
	execQ := make(chan *corev1.Pod, 100000)
	for w := 0; w < 4; w++ {
		go func() {
			for p := range execQ {
				completeExecutor(ctx, cs, p)
				st.mu.Lock()
				st.execDone++
				st.mu.Unlock()
			}
		}()
	}

	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(o.ns))
	depInf := factory.Apps().V1().Deployments().Informer()
	podInf := factory.Core().V1().Pods().Informer()
	jobInf := factory.Batch().V1().Jobs().Informer()
	dynFactory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(dyn, 0, o.ns, nil)
	dbmInf := dynFactory.ForResource(dbmGVR).Informer()

	onDep := func(obj any) {
		now := time.Now()
		d, ok := obj.(*appsv1.Deployment)
		if !ok {
			return
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		s := d.Status
		settled := d.Status.ObservedGeneration == d.Generation && s.UpdatedReplicas == want &&
			s.AvailableReplicas == want && s.Replicas == want
		st.mu.Lock()
		defer st.mu.Unlock()
		st.ready[d.Name] = settled
		st.depOK[d.Name] = settled && d.Spec.Template.Labels[versionLabel] == st.newVer
		st.checkComplete(d.Name, now)
	}
	_, _ = depInf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: onDep, UpdateFunc: func(_, n any) { onDep(n) }})

	onPod := func(obj any, deleted bool) {
		now := time.Now()
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		if _, isExec := p.Labels[executorLabel]; isExec {
			if deleted || p.Spec.NodeName == "" || p.DeletionTimestamp != nil ||
				(p.Status.Phase != "" && p.Status.Phase != corev1.PodPending) {
				return
			}
			st.mu.Lock()
			fresh := !st.executors[string(p.UID)]
			st.executors[string(p.UID)] = true
			st.mu.Unlock()
			if fresh {
				execQ <- p
			}
			return
		}
		dep := p.Labels[appLabel]
		if dep == "" {
			return
		}
		st.mu.Lock()
		defer st.mu.Unlock()
		set := st.oldPods[dep]
		if set == nil {
			set = map[string]struct{}{}
			st.oldPods[dep] = set
		}
		if deleted || p.Labels[versionLabel] == st.newVer {
			delete(set, p.Name)
		} else {
			set[p.Name] = struct{}{}
		}
		st.checkComplete(dep, now)
	}
	_, _ = podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { onPod(obj, false) },
		UpdateFunc: func(_, n any) { onPod(n, false) },
		DeleteFunc: func(obj any) { onPod(obj, true) },
	})

	_, _ = jobInf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: func(obj any) {
		now := time.Now()
		j, ok := obj.(*batchv1.Job)
		if !ok {
			return
		}
		st.mu.Lock()
		st.jobs[j.Labels[uidLabel]+"/"+j.Labels[phaseLabel]]++
		if j.Labels[phaseLabel] != "contract" {
			st.mu.Unlock()
			return
		}
		if _, seen := st.contract[j.Labels[uidLabel]]; !seen {
			st.contract[j.Labels[uidLabel]] = now
		}
		st.mu.Unlock()
	}})

	onDBM := func(obj any) {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			return
		}
		phase, _, _ := unstructured.NestedString(u.Object, "status", "phase")
		st.mu.Lock()
		st.phases[u.GetName()] = phase
		st.uids[string(u.GetUID())] = u.GetName()
		st.mu.Unlock()
	}
	_, _ = dbmInf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: onDBM, UpdateFunc: func(_, n any) { onDBM(n) }})

	factory.Start(ctx.Done())
	dynFactory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	dynFactory.WaitForCacheSync(ctx.Done())

	// Deployments.
	t0 := time.Now()
	logf("creating %d Deployments x %d replicas in %s", o.deployments, o.replicas, o.ns)
	if err := parallel(o.workers, o.deployments, func(i int) error {
		_, err := cs.AppsV1().Deployments(o.ns).Create(ctx, deployment(depName(i), o.ns, int32(o.replicas), o.oldVersion), metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	}); err != nil {
		return err
	}
	if err := waitFor(ctx, o.readyTimeout, "all Deployments available", func() (bool, string) {
		st.mu.Lock()
		defer st.mu.Unlock()
		n := 0
		for _, ok := range st.ready {
			if ok {
				n++
			}
		}
		return n >= o.deployments, fmt.Sprintf("%d/%d available", n, o.deployments)
	}); err != nil {
		return err
	}
	logf("%d Deployments (%d pods) available in %.0fs", o.deployments, o.deployments*o.replicas, time.Since(t0).Seconds())

	// Migrations (before the operator starts: a leader start sees all of them at once).
	logf("creating %d DatabaseMigrations (%d targets each)", o.migrations, o.targets)
	if err := parallel(o.workers, o.migrations, func(i int) error {
		_, err := dyn.Resource(dbmGVR).Namespace(o.ns).Create(ctx, migration(i, o), metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	}); err != nil {
		return err
	}

	// The operator, behind the counting proxy.
	dir := filepath.Dir(o.out)
	stats := &proxyStats{m: map[ReqKey]*reqStat{}}
	kubeconfig, err := startProxy(cfg, stats, dir)
	if err != nil {
		return err
	}
	logFile, err := os.Create(o.operatorLog)
	if err != nil {
		return err
	}
	defer logFile.Close()
	api0, err := scrapeAPIServer(ctx, cs)
	if err != nil {
		return fmt.Errorf("scraping the API server's /metrics: %w", err)
	}
	cmd := exec.Command(o.operator, "controller", "--metrics-addr", "127.0.0.1:0")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "PHASEGATE_LEADER_ELECTION=false", "PHASEGATE_NAMESPACE=")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The operator does not outlive the helper (interrupted runs leave nothing behind).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
		}
	}()
	logf("operator %s started (pid %d, log %s)", o.operator, pid, o.operatorLog)

	var samplesMu sync.Mutex
	var samples []procSample
	var last procSample
	go func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-exited:
				return
			case <-tick.C:
				if s, ok := sampleProc(pid); ok {
					samplesMu.Lock()
					samples = append(samples, s)
					last = s
					samplesMu.Unlock()
				}
			}
		}
	}()
	snap := func() procSample {
		s, ok := sampleProc(pid)
		if !ok {
			samplesMu.Lock()
			defer samplesMu.Unlock()
			return last
		}
		return s
	}
	maxRSS := func(from, to time.Time) float64 {
		samplesMu.Lock()
		defer samplesMu.Unlock()
		m := int64(0)
		for _, s := range samples {
			if !s.T.Before(from) && !s.T.After(to) && s.RSSKiB > m {
				m = s.RSSKiB
			}
		}
		return float64(m) / 1024
	}
	meanRSS := func(from, to time.Time) float64 {
		samplesMu.Lock()
		defer samplesMu.Unlock()
		var sum, n int64
		for _, s := range samples {
			if !s.T.Before(from) && !s.T.After(to) {
				sum += s.RSSKiB
				n++
			}
		}
		if n == 0 {
			return 0
		}
		return float64(sum) / float64(n) / 1024
	}

	// Startup: every migration expanded and waiting for the rollout.
	tStart := time.Now()
	p0 := stats.snapshot()
	err = waitFor(ctx, o.startupTimeout, "all migrations AwaitingRollout", func() (bool, string) {
		st.mu.Lock()
		defer st.mu.Unlock()
		n := st.countPhase("AwaitingRollout")
		return n >= o.migrations, fmt.Sprintf("%d/%d AwaitingRollout, %d Expanding, %d Pending, %d Failed, %d executor pods completed",
			n, o.migrations, st.countPhase("Expanding"), st.countPhase("Pending"), st.countPhase("Failed"), st.execDone)
	})
	res.StartupOK = err == nil
	res.StartupSeconds = time.Since(tStart).Seconds()
	res.RSSStartupMiB = maxRSS(tStart, time.Now())
	c1 := snap()
	res.CPUStartup = c1.CPUSeconds
	p1 := stats.snapshot()
	res.OperatorStartup = diffCounts(p0, p1)
	if err != nil {
		logf("WARNING: %v; rolling out anyway", err)
	} else {
		logf("all %d migrations AwaitingRollout %.1fs after the operator started", o.migrations, res.StartupSeconds)
	}

	// Idle: nothing changes; the operator should do (almost) nothing.
	tIdle := time.Now()
	select {
	case <-time.After(o.idle):
	case <-exited:
		return fmt.Errorf("the operator exited (see %s)", o.operatorLog)
	}
	c2 := snap()
	res.IdleSeconds = time.Since(tIdle).Seconds()
	res.CPUIdle = c2.CPUSeconds - c1.CPUSeconds
	res.RSSSteadyMiB = meanRSS(tIdle, time.Now())
	p2 := stats.snapshot()
	res.OperatorIdle = diffCounts(p1, p2)
	stats.latencies()
	stats.timing.Store(true)

	// The wave.
	api1, err := scrapeAPIServer(ctx, cs)
	if err != nil {
		return err
	}
	load0, _ := os.ReadFile("/proc/loadavg")
	tWave := time.Now()
	st.mu.Lock()
	st.waveOn = true
	st.mu.Unlock()
	waveDone, peakDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(peakDone)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		prev := stats.total.Load()
		for {
			select {
			case <-waveDone:
				return
			case <-tick.C:
				n := stats.total.Load()
				if n-prev > res.PeakReqPerSec {
					res.PeakReqPerSec = n - prev
				}
				prev = n
			}
		}
	}()
	res.WaveDeployments, res.WaveMigrations = o.waveDeployments(), 0
	for i := 0; i < o.migrations; i++ {
		if o.inWave(i) {
			res.WaveMigrations++
		}
	}
	logf("rollout wave: %d of %d Deployments -> %s (%d migrations have all their targets in it)",
		res.WaveDeployments, o.deployments, o.newVersion, res.WaveMigrations)
	patch := []byte(fmt.Sprintf(`{"spec":{"template":{"metadata":{"labels":{%q:%q}},"spec":{"containers":[{"name":"app","image":"example.com/bench/app:%s"}]}}}}`,
		versionLabel, o.newVersion, o.newVersion))
	if err := parallel(o.workers, res.WaveDeployments, func(i int) error {
		_, err := cs.AppsV1().Deployments(o.ns).Patch(ctx, depName(i), types.StrategicMergePatchType, patch, metav1.PatchOptions{})
		return err
	}); err != nil {
		return err
	}
	logf("all Deployments patched in %.1fs", time.Since(tWave).Seconds())
	err = waitFor(ctx, o.waveTimeout, "all migrations Succeeded", func() (bool, string) {
		st.mu.Lock()
		defer st.mu.Unlock()
		ok, failed := st.countPhase("Succeeded"), st.countPhase("Failed")
		return ok+failed >= res.WaveMigrations, fmt.Sprintf("%d/%d Deployments complete, %d contract Jobs, %d Succeeded, %d Failed",
			len(st.complete), res.WaveDeployments, len(st.contract), ok, failed)
	})
	res.WaveOK = err == nil
	res.WaveSeconds = time.Since(tWave).Seconds()
	close(waveDone)
	<-peakDone
	if err != nil {
		logf("WARNING: %v", err)
	}
	c3 := snap()
	res.CPUWave = c3.CPUSeconds - c2.CPUSeconds
	p3 := stats.snapshot()
	stats.timing.Store(false)
	res.OperatorWave = diffCounts(p2, p3)
	lat := stats.latencies()
	for i, q := range res.OperatorWave {
		if l, ok := lat[ReqKey{q.Verb, q.Resource}]; ok {
			res.OperatorWave[i].P50Ms, res.OperatorWave[i].P99Ms = l[0], l[1]
		}
	}
	load1, _ := os.ReadFile("/proc/loadavg")
	res.Load = fmt.Sprintf("start %s; end %s", fields3(load0), fields3(load1))
	api2, err := scrapeAPIServer(ctx, cs)
	if err != nil {
		return err
	}
	res.APIServerWave = diffAPI(api1, api2)
	for _, r := range res.APIServerWave {
		if r.Resource == "databasemigrations/status" && (r.Verb == "PATCH" || r.Verb == "PUT" || r.Verb == "APPLY") {
			res.StatusWrites += r.Count
		}
	}
	for _, r := range diffAPI(api0, api2) {
		if r.Resource == "databasemigrations/status" && (r.Verb == "PATCH" || r.Verb == "PUT" || r.Verb == "APPLY") {
			res.StatusWritesAll += r.Count
		}
	}

	// Reactions.
	type reaction struct {
		name           string
		ms             float64
		complete, seen time.Time
	}
	var slow []reaction
	st.mu.Lock()
	res.Succeeded, res.Failed = st.countPhase("Succeeded"), st.countPhase("Failed")
	res.ExecutorPods = st.execDone
	uidOf := map[string]string{}
	for uid, name := range st.uids {
		uidOf[name] = uid
	}
	for i := 0; i < o.migrations; i++ {
		var last time.Time
		complete := true
		for _, d := range targetsOf(i, o) {
			t, ok := st.complete[d]
			if !ok {
				complete = false
				break
			}
			if t.After(last) {
				last = t
			}
		}
		if !o.inWave(i) {
			continue
		}
		seen, ok := st.contract[uidOf[migName(i)]]
		switch {
		case !ok:
			res.NoContractJob++
			if !complete {
				res.TargetsIncomplete++
			}
		case !complete:
			res.TargetsIncomplete++
		default:
			ms := float64(seen.Sub(last).Microseconds()) / 1000
			res.ReactionsMs = append(res.ReactionsMs, ms)
			slow = append(slow, reaction{migName(i), ms, last, seen})
		}
	}
	for _, n := range st.jobs {
		res.ExtraJobs += n - 1
	}
	st.mu.Unlock()
	sort.Float64s(res.ReactionsMs)
	// The slowest ones by name and time, to find them in the operator's log.
	sort.Slice(slow, func(a, b int) bool { return slow[a].ms > slow[b].ms })
	for _, r := range slow[:min(5, len(slow))] {
		logf("slow reaction: %s %.0f ms (last target complete %s, contract Job seen %s)",
			r.name, r.ms, r.complete.UTC().Format("15:04:05.000"), r.seen.UTC().Format("15:04:05.000"))
	}

	gates := gateTimes(o.operatorLog)
	for _, r := range slow {
		if g, ok := gates[r.name]; ok {
			res.GateReconcileMs = append(res.GateReconcileMs, g[0])
			res.GateQuorumMs = append(res.GateQuorumMs, g[1])
			res.GateWaitMs = append(res.GateWaitMs, max(r.ms-g[0], 0))
		}
	}
	sort.Float64s(res.GateReconcileMs)
	sort.Float64s(res.GateQuorumMs)
	sort.Float64s(res.GateWaitMs)

	// Shutdown.
	time.Sleep(2 * time.Second)
	c4 := snap()
	res.RSSEndMiB = float64(c4.RSSKiB) / 1024
	res.RSSPeakMiB = float64(c4.HWMKiB) / 1024
	res.CPUTotal = c4.CPUSeconds
	tTerm := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		res.ShutdownSeconds = time.Since(tTerm).Seconds()
	case <-time.After(60 * time.Second):
		res.ShutdownSeconds = -1
		_ = cmd.Process.Kill()
	}

	b, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(o.out, b, 0o644); err != nil {
		return err
	}
	logf("wrote %s", o.out)
	return nil
}

var (
	ansi       = regexp.MustCompile(`\x1b\[[0-9;]*m`)
	reconcileR = regexp.MustCompile(`reconcile_ms=(\d+)`)
	quorumR    = regexp.MustCompile(`quorum_read_ms=(?:Some\()?(\d+)`)
	migrationR = regexp.MustCompile(`migration=(\S+)`)
)

// gateTimes reads the contract "started Job" lines of the operator's log: per migration, the
// deciding reconcile's duration and the quorum read inside it (operators without these
// fields give none).
func gateTimes(path string) map[string][2]float64 {
	out := map[string][2]float64{}
	b, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(ansi.ReplaceAllString(string(b), ""), "\n") {
		if !strings.Contains(line, "started Job") || !strings.Contains(line, "phase=contract") {
			continue
		}
		name, r, q := migrationR.FindStringSubmatch(line), reconcileR.FindStringSubmatch(line), quorumR.FindStringSubmatch(line)
		if name == nil || r == nil || q == nil {
			continue
		}
		rv, _ := strconv.ParseFloat(r[1], 64)
		qv, _ := strconv.ParseFloat(q[1], 64)
		out[name[1]] = [2]float64{rv, qv}
	}
	return out
}

func fields3(b []byte) string {
	var a, c, d string
	fmt.Sscan(string(b), &a, &c, &d)
	return a + " " + c + " " + d
}

func completeExecutor(ctx context.Context, cs kubernetes.Interface, p *corev1.Pod) {
	now := time.Now().UTC().Format(time.RFC3339)
	name := "executor"
	image := ""
	if len(p.Spec.Containers) > 0 {
		name, image = p.Spec.Containers[0].Name, p.Spec.Containers[0].Image
	}
	patch, _ := json.Marshal(map[string]any{"status": map[string]any{
		"phase":      "Succeeded",
		"conditions": []any{map[string]any{"type": "Ready", "status": "False", "lastTransitionTime": now}},
		"containerStatuses": []any{map[string]any{
			"name": name, "image": image, "imageID": "", "ready": false, "restartCount": 0, "started": false,
			"state": map[string]any{"terminated": map[string]any{
				"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}},
		}},
	}})
	for attempt := 0; attempt < 5; attempt++ {
		_, err := cs.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
		if err == nil || apierrors.IsNotFound(err) {
			return
		}
		time.Sleep(time.Second)
	}
}

func depName(i int) string { return fmt.Sprintf("app-%05d", i) }
func migName(i int) string { return fmt.Sprintf("mig-%05d", i) }

func (o opts) waveDeployments() int {
	if o.wave <= 0 || o.wave > o.deployments {
		return o.deployments
	}
	return o.wave
}

// inWave: every target of migration i is among the Deployments the wave rolls.
func (o opts) inWave(i int) bool {
	for k := 0; k < o.targets; k++ {
		if o.targetIndex(i, k) >= o.waveDeployments() {
			return false
		}
	}
	return true
}

// targetIndex: the Deployment (by index) that is migration i's k-th target.
func (o opts) targetIndex(i, k int) int { return (i*o.targets + k) % o.deployments }

func targetsOf(i int, o opts) []string {
	out := make([]string, 0, o.targets)
	for k := 0; k < o.targets; k++ {
		out = append(out, depName(o.targetIndex(i, k)))
	}
	return out
}

func deployment(name, ns string, replicas int32, version string) *appsv1.Deployment {
	labels := map[string]string{appLabel: name}
	tmpl := map[string]string{appLabel: name, versionLabel: version}
	zero := int64(0)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: tmpl},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &zero,
					Containers:                    []corev1.Container{{Name: "app", Image: "example.com/bench/app:" + version}},
				},
			},
		},
	}
}

func migration(i int, o opts) *unstructured.Unstructured {
	var targets []any
	for _, d := range targetsOf(i, o) {
		targets = append(targets, map[string]any{"kind": "Deployment", "name": d})
	}
	table := fmt.Sprintf("t%05d", i)
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "phasegate.dev/v1alpha1",
		"kind":       "DatabaseMigration",
		"metadata":   map[string]any{"name": migName(i), "namespace": o.ns},
		"spec": map[string]any{
			"appVersion": o.newVersion,
			"database":   map[string]any{"urlSecretRef": map[string]any{"name": "bench-db", "key": fmt.Sprintf("db-%05d", i)}},
			"expand":     map[string]any{"sql": fmt.Sprintf("ALTER TABLE %s ADD COLUMN new_col text;\n", table)},
			"contract":   map[string]any{"sql": fmt.Sprintf("ALTER TABLE %s DROP COLUMN old_col;\n", table)},
			"rollout": map[string]any{
				"targets":     targets,
				"versionFrom": map[string]any{"label": versionLabel},
				"timeout":     "2h",
			},
		},
	}}
}

func parallel(workers, n int, f func(i int) error) error {
	ch := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ch {
				if err := f(i); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		ch <- i
	}
	close(ch)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	lastLog := time.Now()
	for {
		ok, progress := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s (%s)", timeout, what, progress)
		}
		if time.Since(lastLog) > 15*time.Second {
			logf("waiting for %s: %s", what, progress)
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
