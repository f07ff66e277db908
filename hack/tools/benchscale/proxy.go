package main

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/client-go/rest"
)

// The operator talks to the API server through this counting proxy (plain HTTP on loopback,
// TLS with the admin identity upstream), so its own requests are told apart from the
// controller-manager's, the scheduler's, kwok's and this helper's, which the API server's
// metrics cannot do (they have no client label).

// ReqKey is what a request did: verb as the API server's metrics spell it (GET, LIST, WATCH,
// POST, PUT, PATCH, DELETE) and resource[/subresource].
type ReqKey struct{ Verb, Resource string }

type reqStat struct {
	count, bytes, errors atomic.Int64
	// Response times (ms, request to full answer) while timing is on; never WATCHes.
	mu  sync.Mutex
	dur []float64
}

type proxyStats struct {
	mu     sync.Mutex
	m      map[ReqKey]*reqStat
	total  atomic.Int64
	timing atomic.Bool
}

// latencies returns the p50 and p99 response times recorded per request kind, and forgets them.
func (p *proxyStats) latencies() map[ReqKey][2]float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[ReqKey][2]float64{}
	for k, s := range p.m {
		s.mu.Lock()
		d := s.dur
		s.dur = nil
		s.mu.Unlock()
		if len(d) > 0 {
			sort.Float64s(d)
			out[k] = [2]float64{percentile(d, 50), percentile(d, 99)}
		}
	}
	return out
}

func (p *proxyStats) get(k ReqKey) *reqStat {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.m[k]
	if !ok {
		s = &reqStat{}
		p.m[k] = s
	}
	return s
}

// ReqCount is one row of a snapshot.
type ReqCount struct {
	Verb     string `json:"verb"`
	Resource string `json:"resource"`
	Count    int64  `json:"count"`
	Bytes    int64  `json:"bytes"`
	Errors   int64  `json:"errors"` // responses with status >= 400 (404s included)
	// The API server's answer time as the operator saw it (wave only; not for WATCH).
	P50Ms float64 `json:"p50_ms,omitempty"`
	P99Ms float64 `json:"p99_ms,omitempty"`
}

func (p *proxyStats) snapshot() map[ReqKey]ReqCount {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[ReqKey]ReqCount{}
	for k, s := range p.m {
		out[k] = ReqCount{Verb: k.Verb, Resource: k.Resource, Count: s.count.Load(), Bytes: s.bytes.Load(), Errors: s.errors.Load()}
	}
	return out
}

func diffCounts(a, b map[ReqKey]ReqCount) []ReqCount {
	var out []ReqCount
	for k, v := range b {
		o := a[k]
		d := ReqCount{Verb: k.Verb, Resource: k.Resource, Count: v.Count - o.Count, Bytes: v.Bytes - o.Bytes, Errors: v.Errors - o.Errors}
		if d.Count != 0 || d.Bytes != 0 {
			out = append(out, d)
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

type countingWriter struct {
	http.ResponseWriter
	st   *reqStat
	code int
}

func (w *countingWriter) WriteHeader(code int) {
	w.code = code
	if code >= 400 {
		w.st.errors.Add(1)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = 200
	}
	n, err := w.ResponseWriter.Write(b)
	w.st.bytes.Add(int64(n))
	return n, err
}

func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// classify maps a request to the API server's verb and resource[/subresource].
func classify(r *http.Request) ReqKey {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	var rest []string
	switch {
	case len(parts) >= 2 && parts[0] == "api":
		rest = parts[2:]
	case len(parts) >= 3 && parts[0] == "apis":
		rest = parts[3:]
	default:
		return ReqKey{r.Method, "(non-resource) /" + parts[0]}
	}
	watch := r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1"
	if len(rest) > 0 && rest[0] == "watch" {
		watch, rest = true, rest[1:]
	}
	if len(rest) >= 3 && rest[0] == "namespaces" {
		rest = rest[2:]
	}
	if len(rest) == 0 {
		return ReqKey{r.Method, "(discovery)"}
	}
	res, name := rest[0], ""
	if len(rest) > 1 {
		name = rest[1]
	}
	if len(rest) > 2 {
		res += "/" + rest[2]
	}
	verb := r.Method
	switch r.Method {
	case http.MethodGet:
		switch {
		case watch:
			verb = "WATCH"
		case name == "":
			verb = "LIST"
		default:
			verb = "GET"
		}
	case http.MethodPatch:
		if strings.Contains(r.Header.Get("Content-Type"), "apply-patch") {
			verb = "APPLY"
		}
	}
	return ReqKey{verb, res}
}

// startProxy serves on a free loopback port and writes a kubeconfig that points at it.
func startProxy(cfg *rest.Config, st *proxyStats, dir string) (string, error) {
	tr, err := rest.TransportFor(cfg)
	if err != nil {
		return "", err
	}
	u, err := url.Parse(cfg.Host)
	if err != nil {
		return "", err
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = tr
	rp.FlushInterval = -1
	rp.ErrorLog = nil
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k := classify(r)
		s := st.get(k)
		s.count.Add(1)
		st.total.Add(1)
		start := time.Now()
		rp.ServeHTTP(&countingWriter{ResponseWriter: w, st: s}, r)
		if k.Verb != "WATCH" && st.timing.Load() {
			ms := float64(time.Since(start).Microseconds()) / 1000
			s.mu.Lock()
			s.dur = append(s.dur, ms)
			s.mu.Unlock()
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() { _ = http.Serve(ln, handler) }()
	path := filepath.Join(dir, "operator-kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster:
    server: http://%s
users:
- name: bench
  user: {}
contexts:
- name: bench
  context: {cluster: bench, user: bench, namespace: default}
current-context: bench
`, ln.Addr().String())
	return path, os.WriteFile(path, []byte(kc), 0o600)
}
