package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"strings"
)

func load(path string) (*Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Result
	return &r, json.Unmarshal(b, &r)
}

// percentile over sorted values (nearest rank); NaN when empty.
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p/100*float64(len(v)))) - 1
	if i < 0 {
		i = 0
	}
	return v[i]
}

func sumReq(rs []ReqCount) (n, bytes, errs int64) {
	for _, r := range rs {
		n += r.Count
		bytes += r.Bytes
		errs += r.Errors
	}
	return
}

func sumAPI(rs []APICount) (n int64) {
	for _, r := range rs {
		if r.Verb != "WATCH" {
			n += r.Count
		}
	}
	return
}

type row struct {
	name string
	f    func(r *Result) float64
	fmt  string
}

func cmdReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	baseline := fs.String("baseline", "", "baseline run (JSON)")
	top := fs.Int("top", 12, "rows of the request tables")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("usage: benchscale report [--baseline base.json] current.json")
	}
	cur, err := load(fs.Arg(0))
	if err != nil {
		return err
	}
	var base *Result
	if *baseline != "" {
		if base, err = load(*baseline); err != nil {
			return err
		}
	}
	opReq := func(r *Result) float64 { n, _, _ := sumReq(r.OperatorWave); return float64(n) }
	rows := []row{
		{"startup: operator start -> all AwaitingRollout (s)", func(r *Result) float64 { return r.StartupSeconds }, "%.1f"},
		{"wave: first patch -> all migrations finished (s)", func(r *Result) float64 { return r.WaveSeconds }, "%.1f"},
		{"migrations Succeeded", func(r *Result) float64 { return float64(r.Succeeded) }, "%.0f"},
		{"migrations Failed", func(r *Result) float64 { return float64(r.Failed) }, "%.0f"},
		{"RSS peak (MiB, VmHWM)", func(r *Result) float64 { return r.RSSPeakMiB }, "%.1f"},
		{"RSS peak during startup (MiB)", func(r *Result) float64 { return r.RSSStartupMiB }, "%.1f"},
		{"RSS steady (MiB, mean while all wait)", func(r *Result) float64 { return r.RSSSteadyMiB }, "%.1f"},
		{"RSS after the wave (MiB)", func(r *Result) float64 { return r.RSSEndMiB }, "%.1f"},
		{"CPU startup (s, utime+stime)", func(r *Result) float64 { return r.CPUStartup }, "%.2f"},
		{"CPU idle (s per minute)", func(r *Result) float64 {
			if r.IdleSeconds == 0 {
				return math.NaN()
			}
			return r.CPUIdle / r.IdleSeconds * 60
		}, "%.2f"},
		{"CPU wave (s)", func(r *Result) float64 { return r.CPUWave }, "%.2f"},
		{"CPU total (s)", func(r *Result) float64 { return r.CPUTotal }, "%.2f"},
		{"operator API requests, startup", func(r *Result) float64 { n, _, _ := sumReq(r.OperatorStartup); return float64(n) }, "%.0f"},
		{"operator API requests, idle window", func(r *Result) float64 { n, _, _ := sumReq(r.OperatorIdle); return float64(n) }, "%.0f"},
		{"operator API requests, wave", opReq, "%.0f"},
		{"operator API requests/s, wave", func(r *Result) float64 { return opReq(r) / r.WaveSeconds }, "%.1f"},
		{"operator API requests/s, busiest second of the wave", func(r *Result) float64 { return float64(r.PeakReqPerSec) }, "%.0f"},
		{"operator API error responses, wave", func(r *Result) float64 { _, _, e := sumReq(r.OperatorWave); return float64(e) }, "%.0f"},
		{"MiB the operator received, wave", func(r *Result) float64 { _, b, _ := sumReq(r.OperatorWave); return float64(b) / (1 << 20) }, "%.1f"},
		{"apiserver requests (all clients, no WATCH), wave", func(r *Result) float64 { return float64(sumAPI(r.APIServerWave)) }, "%.0f"},
		{"status writes (databasemigrations/status), wave", func(r *Result) float64 { return float64(r.StatusWrites) }, "%.0f"},
		{"status writes, operator lifetime", func(r *Result) float64 { return float64(r.StatusWritesAll) }, "%.0f"},
		{"reaction p50 (ms)", func(r *Result) float64 { return percentile(r.ReactionsMs, 50) }, "%.0f"},
		{"reaction p99 (ms)", func(r *Result) float64 { return percentile(r.ReactionsMs, 99) }, "%.0f"},
		{"reaction max (ms)", func(r *Result) float64 { return percentile(r.ReactionsMs, 100) }, "%.0f"},
		{"  gate reconcile p50 (ms, operator log)", func(r *Result) float64 { return percentile(r.GateReconcileMs, 50) }, "%.0f"},
		{"  gate reconcile p99 (ms, operator log)", func(r *Result) float64 { return percentile(r.GateReconcileMs, 99) }, "%.0f"},
		{"  quorum read in it p50 (ms)", func(r *Result) float64 { return percentile(r.GateQuorumMs, 50) }, "%.0f"},
		{"  quorum read in it p99 (ms)", func(r *Result) float64 { return percentile(r.GateQuorumMs, 99) }, "%.0f"},
		{"  wait before it p50 (ms, reaction - reconcile)", func(r *Result) float64 { return percentile(r.GateWaitMs, 50) }, "%.0f"},
		{"  wait before it p99 (ms)", func(r *Result) float64 { return percentile(r.GateWaitMs, 99) }, "%.0f"},
		{"reactions measured", func(r *Result) float64 { return float64(len(r.ReactionsMs)) }, "%.0f"},
		{"executor Jobs beyond one per migration and phase", func(r *Result) float64 { return float64(r.ExtraJobs) }, "%.0f"},
		{"migrations without a contract Job", func(r *Result) float64 { return float64(r.NoContractJob) }, "%.0f"},
		{"shutdown: SIGTERM -> exit (s)", func(r *Result) float64 { return r.ShutdownSeconds }, "%.2f"},
	}

	fmt.Printf("\nbench-scale: %d Deployments x %d replicas (%d pods), %d migrations x 5 targets\n",
		cur.Deployments, cur.Replicas, cur.Pods, cur.Migrations)
	if cur.WaveDeployments > 0 && cur.WaveDeployments < cur.Deployments {
		fmt.Printf("  the wave rolls %d of the %d Deployments: the %d migrations whose targets all roll are waited for and measured\n",
			cur.WaveDeployments, cur.Deployments, cur.WaveMigrations)
	}
	for _, r := range []*Result{base, cur} {
		if r != nil {
			fmt.Printf("  %-8s %s\n           load average during the wave: %s\n", r.Label+":", r.Operator, r.Load)
		}
	}
	fmt.Println()
	cell := func(f string, v float64) string {
		if math.IsNaN(v) {
			return "-"
		}
		return fmt.Sprintf(f, v)
	}
	if base != nil {
		fmt.Printf("| %-50s | %12s | %12s | %9s |\n", "metric", base.Label, cur.Label, "cur/base")
		fmt.Printf("|%s|%s|%s|%s|\n", strings.Repeat("-", 52), strings.Repeat("-", 14), strings.Repeat("-", 14), strings.Repeat("-", 11))
		for _, rw := range rows {
			b, c := rw.f(base), rw.f(cur)
			ratio := "-"
			if !math.IsNaN(b) && !math.IsNaN(c) && b != 0 {
				ratio = fmt.Sprintf("%.2f", c/b)
			}
			fmt.Printf("| %-50s | %12s | %12s | %9s |\n", rw.name, cell(rw.fmt, b), cell(rw.fmt, c), ratio)
		}
	} else {
		fmt.Printf("| %-50s | %12s |\n", "metric", cur.Label)
		fmt.Printf("|%s|%s|\n", strings.Repeat("-", 52), strings.Repeat("-", 14))
		for _, rw := range rows {
			fmt.Printf("| %-50s | %12s |\n", rw.name, cell(rw.fmt, rw.f(cur)))
		}
	}
	for _, r := range []*Result{base, cur} {
		if r == nil {
			continue
		}
		fmt.Printf("\n%s: the operator's requests during the wave (counted at its proxy), top %d\n", r.Label, *top)
		fmt.Printf("| %-7s | %-34s | %9s | %10s | %7s | %7s | %7s |\n", "verb", "resource", "requests", "MiB recv", "errors", "p50 ms", "p99 ms")
		fmt.Printf("|%s|%s|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 9), strings.Repeat("-", 36), strings.Repeat("-", 11), strings.Repeat("-", 12), strings.Repeat("-", 9), strings.Repeat("-", 9), strings.Repeat("-", 9))
		for i, q := range r.OperatorWave {
			if i >= *top {
				break
			}
			ms := func(v float64) string {
				if v == 0 {
					return "-"
				}
				return fmt.Sprintf("%.0f", v)
			}
			fmt.Printf("| %-7s | %-34s | %9d | %10.1f | %7d | %7s | %7s |\n", q.Verb, q.Resource, q.Count, float64(q.Bytes)/(1<<20), q.Errors, ms(q.P50Ms), ms(q.P99Ms))
		}
		fmt.Printf("\n%s: apiserver_request_total delta during the wave (all clients), top %d\n", r.Label, *top)
		fmt.Printf("| %-7s | %-34s | %9s |\n", "verb", "resource", "requests")
		fmt.Printf("|%s|%s|%s|\n", strings.Repeat("-", 9), strings.Repeat("-", 36), strings.Repeat("-", 11))
		for i, q := range r.APIServerWave {
			if i >= *top {
				break
			}
			fmt.Printf("| %-7s | %-34s | %9d |\n", q.Verb, q.Resource, q.Count)
		}
	}
	n, _, _ := sumReq(cur.OperatorWave)
	fmt.Printf("\nscale: deployments=%d pods=%d migrations=%d rss_peak_mib=%.1f reaction_p50_ms=%s reaction_p99_ms=%s api_requests=%d status_writes=%d\n",
		cur.Deployments, cur.Pods, cur.Migrations, cur.RSSPeakMiB,
		cell("%.0f", percentile(cur.ReactionsMs, 50)), cell("%.0f", percentile(cur.ReactionsMs, 99)), n, cur.StatusWrites)
	return nil
}
