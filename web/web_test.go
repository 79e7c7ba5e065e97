package web

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
)

var fakePage = fstest.MapFS{
	".gitkeep":   {Data: nil},
	"index.html": {Data: []byte("<!doctype html><title>Console</title>")},
	"app.js":     {Data: []byte("console.log(1)")},
	"app.css":    {Data: []byte("body{margin:0}")},
}

func get(t *testing.T, h http.Handler, method, path string, header http.Header) *http.Response {
	t.Helper()
	r := httptest.NewRequest(method, "http://console.test/x", nil)
	r.URL.Path = path
	for k, v := range header {
		r.Header[k] = v
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Result()
}

func body(t *testing.T, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func checkSecurityHeaders(t *testing.T, res *http.Response) {
	t.Helper()
	if got := res.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("X-Content-Type-Options = %q, want nosniff", got)
	}
	directives := map[string]string{}
	for _, d := range strings.Split(res.Header.Get("Content-Security-Policy"), ";") {
		name, value, _ := strings.Cut(strings.TrimSpace(d), " ")
		directives[name] = value
	}
	for name, want := range map[string]string{
		"default-src": "'none'",
		"script-src":  "'self'",
		"connect-src": "'self'",
		"style-src":   "'self' 'unsafe-inline'", // xterm.js writes <style> elements
	} {
		if got := directives[name]; got != want {
			t.Errorf("Content-Security-Policy %s = %q, want %q", name, got, want)
		}
	}
}

func TestBuiltPage(t *testing.T) {
	h := newHandler(fakePage)
	tests := []struct {
		path, contentType, body string
	}{
		{"", "text/html; charset=utf-8", "<!doctype html><title>Console</title>"},
		{"/", "text/html; charset=utf-8", "<!doctype html><title>Console</title>"},
		{"/index.html", "text/html; charset=utf-8", "<!doctype html><title>Console</title>"},
		{"/app.js", "text/javascript; charset=utf-8", "console.log(1)"},
		{"/app.css", "text/css; charset=utf-8", "body{margin:0}"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			res := get(t, h, http.MethodGet, tt.path, nil)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status = %d, want 200", res.StatusCode)
			}
			if got := res.Header.Get("Content-Type"); got != tt.contentType {
				t.Errorf("Content-Type = %q, want %q", got, tt.contentType)
			}
			if got := res.Header.Get("Cache-Control"); got != "no-cache" {
				t.Errorf("Cache-Control = %q, want no-cache", got)
			}
			checkSecurityHeaders(t, res)
			if got := body(t, res); got != tt.body {
				t.Errorf("body = %q, want %q", got, tt.body)
			}
		})
	}
}

func TestUnknownPaths(t *testing.T) {
	h := newHandler(fakePage)
	for _, path := range []string{"/.gitkeep", "/nope.js", "/app.js/", "/sub/app.js", "/../app.js", "/INDEX.HTML"} {
		res := get(t, h, http.MethodGet, path, nil)
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %q: status = %d, want 404", path, res.StatusCode)
		}
		checkSecurityHeaders(t, res)
	}
}

func TestHeadAndConditional(t *testing.T) {
	h := newHandler(fakePage)
	res := get(t, h, http.MethodHead, "/app.js", nil)
	if res.StatusCode != http.StatusOK || body(t, res) != "" {
		t.Fatalf("HEAD: status = %d", res.StatusCode)
	}
	etag := res.Header.Get("ETag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	res = get(t, h, http.MethodGet, "/app.js", http.Header{"If-None-Match": {etag}})
	if res.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: status = %d, want 304", res.StatusCode)
	}
	res = get(t, h, http.MethodPost, "/", nil)
	if res.StatusCode != http.StatusMethodNotAllowed || res.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: status = %d, Allow = %q", res.StatusCode, res.Header.Get("Allow"))
	}
}

func TestNotBuilt(t *testing.T) {
	for name, fsys := range map[string]fstest.MapFS{
		"empty":   {".gitkeep": {}},
		"partial": {".gitkeep": {}, "index.html": fakePage["index.html"], "app.js": fakePage["app.js"]},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHandler(fsys)
			for _, path := range []string{"", "/", "/app.js"} {
				res := get(t, h, http.MethodGet, path, nil)
				if res.StatusCode != http.StatusServiceUnavailable {
					t.Fatalf("GET %q: status = %d, want 503", path, res.StatusCode)
				}
				if got := res.Header.Get("Content-Type"); got != "text/plain; charset=utf-8" {
					t.Errorf("Content-Type = %q", got)
				}
				checkSecurityHeaders(t, res)
				if b := body(t, res); !strings.Contains(b, "make web") {
					t.Errorf("body %q does not say how to build the page", b)
				}
			}
		})
	}
}

// TestEmbedded checks the embedded page agrees with Built, whether or not
// `make web` ran before this test.
func TestEmbedded(t *testing.T) {
	res := get(t, Handler(), http.MethodGet, "/", nil)
	want := http.StatusServiceUnavailable
	if Built() {
		want = http.StatusOK
	}
	if res.StatusCode != want {
		t.Fatalf("Built() = %v but GET / answered %d", Built(), res.StatusCode)
	}
	if Built() {
		b := body(t, res)
		for _, ref := range []string{`src="app.js"`, `href="app.css"`} {
			if !strings.Contains(b, ref) {
				t.Errorf("index.html does not load %s relative to the page", ref)
			}
		}
	}
}
