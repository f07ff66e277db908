package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
)

// apiserver_request_total from the API server's /metrics, summed by verb and
// resource[/subresource] (codes, scopes and versions folded).
type apiCounts map[ReqKey]float64

var labelRe = regexp.MustCompile(`(\w+)="([^"]*)"`)

func scrapeAPIServer(ctx context.Context, cs kubernetes.Interface) (apiCounts, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	raw, err := cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	out := apiCounts{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		end := strings.LastIndex(line, "}")
		if end < 0 {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(line[end+1:]), 64)
		if err != nil {
			continue
		}
		labels := map[string]string{}
		for _, m := range labelRe.FindAllStringSubmatch(line[:end], -1) {
			labels[m[1]] = m[2]
		}
		res := labels["resource"]
		if res == "" {
			res = "(non-resource)"
		}
		if s := labels["subresource"]; s != "" {
			res += "/" + s
		}
		out[ReqKey{labels["verb"], res}] += v
	}
	return out, sc.Err()
}

// APICount is one row of a delta of apiserver_request_total.
type APICount struct {
	Verb     string `json:"verb"`
	Resource string `json:"resource"`
	Count    int64  `json:"count"`
}

func diffAPI(a, b apiCounts) []APICount {
	var out []APICount
	for k, v := range b {
		d := int64(v - a[k])
		if d > 0 {
			out = append(out, APICount{k.Verb, k.Resource, d})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Verb+out[i].Resource < out[j].Verb+out[j].Resource
	})
	return out
}

// ---------------------------------------------------------------- process sampling

type procSample struct {
	T          time.Time
	RSSKiB     int64
	HWMKiB     int64
	CPUSeconds float64
}

const clkTck = 100.0 // USER_HZ on Linux

func sampleProc(pid int) (procSample, bool) {
	s := procSample{T: time.Now()}
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return s, false
	}
	for _, l := range strings.Split(string(st), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			s.RSSKiB, _ = strconv.ParseInt(f[1], 10, 64)
		case "VmHWM:":
			s.HWMKiB, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return s, false
	}
	// Fields after the command name in parentheses: state is field 3, utime 14, stime 15.
	rest := string(stat)
	if i := strings.LastIndex(rest, ")"); i >= 0 {
		rest = rest[i+2:]
	}
	f := strings.Fields(rest)
	if len(f) > 12 {
		ut, _ := strconv.ParseFloat(f[11], 64)
		stt, _ := strconv.ParseFloat(f[12], 64)
		s.CPUSeconds = (ut + stt) / clkTck
	}
	return s, true
}
