// Package web holds the console page (xterm.js + sockjs-client) that
// console-apiserver serves at
// /apis/consoles.kubecube.io/v1alpha1/namespaces/{ns}/pods/{pod}/console/.
//
// The page is built from web/src by `make web` (npm ci && npm run build in
// web/) into web/dist, which is embedded here. A clean clone without npm
// still builds: dist then holds only .gitkeep, Built reports false, and the
// handler answers 503 telling how to build the page.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"strings"
	"sync"
	"time"
)

//go:embed all:dist
var dist embed.FS

// contentSecurityPolicy keeps the page to its own scripts and to its own
// origin for XHR and WebSocket (CSP Level 3 browsers match ws:/wss: of the
// page's own host with 'self'; the SockJS client falls back to XHR
// transports where one does not). Styles need 'unsafe-inline': xterm.js's DOM
// renderer writes its theme and cell sizes into <style> elements it creates.
const contentSecurityPolicy = "default-src 'none'; " +
	"script-src 'self'; " +
	"style-src 'self' 'unsafe-inline'; " +
	"connect-src 'self'; " +
	"img-src 'self' data:; " +
	"font-src 'self'; " +
	"base-uri 'none'; " +
	"form-action 'none'; " +
	"frame-ancestors 'self'"

// notBuiltMessage is the body of every answer when the page was not built.
const notBuiltMessage = "The console page was not built into this binary: run `make web`, then rebuild.\n"

// asset is one file of the page, read once.
type asset struct {
	name        string
	contentType string
	body        []byte
	etag        string
}

// files are the page's files, each served under "/"+name; index.html also
// under "" and "/".
var files = []struct{ name, contentType string }{
	{"index.html", "text/html; charset=utf-8"},
	{"app.js", "text/javascript; charset=utf-8"},
	{"app.css", "text/css; charset=utf-8"},
}

func distFS() fs.FS {
	sub, err := fs.Sub(dist, "dist")
	if err != nil { // cannot happen: "dist" is a valid path
		panic(err)
	}
	return sub
}

// embedded is the page embedded in the binary, read once.
var embedded = sync.OnceValues(func() (map[string]*asset, bool) {
	return load(distFS())
})

// Built reports whether the page was built into the binary (make web).
func Built() bool {
	_, ok := embedded()
	return ok
}

// Handler serves the page's files. It expects r.URL.Path to be the path
// *below* the page's directory: "" or "/" -> index.html, "/app.js",
// "/app.css". Unknown paths are 404. When the page was not built it answers
// 503 with a plain text message telling how to build it.
func Handler() http.Handler {
	return serve(embedded())
}

// load reads the page's files from fsys; ok is false unless all are there.
func load(fsys fs.FS) (map[string]*asset, bool) {
	assets := make(map[string]*asset, len(files))
	for _, f := range files {
		body, err := fs.ReadFile(fsys, f.name)
		if err != nil || len(body) == 0 {
			return nil, false
		}
		sum := sha256.Sum256(body)
		assets[f.name] = &asset{
			name:        f.name,
			contentType: f.contentType,
			body:        body,
			etag:        `"` + hex.EncodeToString(sum[:12]) + `"`,
		}
	}
	return assets, true
}

// newHandler serves the page from fsys, which holds index.html, app.js and
// app.css at its root.
func newHandler(fsys fs.FS) http.Handler {
	return serve(load(fsys))
}

func serve(assets map[string]*asset, built bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("Referrer-Policy", "same-origin")

		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			plain(w, http.StatusMethodNotAllowed, "method not allowed\n")
			return
		}
		if !built {
			h.Set("Cache-Control", "no-store")
			plain(w, http.StatusServiceUnavailable, notBuiltMessage)
			return
		}
		name := strings.TrimPrefix(r.URL.Path, "/")
		if name == "" {
			name = "index.html"
		}
		a, ok := assets[name]
		if !ok {
			plain(w, http.StatusNotFound, "404 page not found\n")
			return
		}
		h.Set("Content-Type", a.contentType)
		// The names carry no content hash: have the browser revalidate every
		// time (cheap with the ETag) so an upgrade is never half-applied.
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", a.etag)
		http.ServeContent(w, r, a.name, time.Time{}, bytes.NewReader(a.body))
	})
}

func plain(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(msg))
}
