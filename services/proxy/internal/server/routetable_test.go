package server

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
)

// notRouted are the routes of Ollama's GenerateRoutes that Drover answers
// as an unknown path on purpose, each with the reason. A route Ollama adds
// in a later release fails TestEveryOllamaRouteIsRoutedOrRefused until it is
// routed or listed here.
var notRouted = map[string]string{
	// ollama.com account routes act on the one account the server is
	// signed in to; a fleet has no single account, and signing every
	// backend out on a client's word would be a management call.
	"POST /api/me":                      "ollama.com account of one server",
	"POST /api/signout":                 "ollama.com account of one server",
	"DELETE /api/user/keys/:encodedKey": "ollama.com account of one server",
}

// TestEveryOllamaRouteIsRoutedOrRefused reads the route table of the Ollama
// release Drover is built and tested against (server/routes.go,
// GenerateRoutes, from the module source) and checks that Drover routes
// every method and path in it, or lists it in notRouted with a reason.
func TestEveryOllamaRouteIsRoutedOrRefused(t *testing.T) {
	routes := ollamaRoutes(t)
	if len(routes) < 30 {
		t.Fatalf("read only %d routes from Ollama's GenerateRoutes: %v", len(routes), routes)
	}
	e := newEnv(t, 1, nil, nil)
	mux, ok := e.srv.Handler().(chi.Routes)
	if !ok {
		t.Fatalf("the server's handler is a %T, not a chi router", e.srv.Handler())
	}
	param := regexp.MustCompile(`:[A-Za-z]+`)
	seen := map[string]bool{}
	for _, r := range routes {
		seen[r] = true
		method, path, _ := strings.Cut(r, " ")
		routed := mux.Match(chi.NewRouteContext(), method, param.ReplaceAllString(path, "x"))
		_, refused := notRouted[r]
		switch {
		case routed && refused:
			t.Errorf("%s is routed but listed as not routed (%s): drop it from notRouted", r, notRouted[r])
		case !routed && !refused:
			t.Errorf("Ollama serves %s; Drover neither routes it nor lists it in notRouted", r)
		}
	}
	for r := range notRouted {
		if !seen[r] {
			t.Errorf("notRouted lists %s, which Ollama's GenerateRoutes does not have", r)
		}
	}
}

// ollamaRoutes returns "METHOD path" for every r.GET/POST/... call with a
// literal path in Ollama's (*Server).GenerateRoutes.
func ollamaRoutes(t *testing.T) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/ollama/ollama").Output()
	if err != nil {
		t.Fatalf("finding the ollama module's source: %v", err)
	}
	src := filepath.Join(strings.TrimSpace(string(out)), "server", "routes.go")
	f, err := parser.ParseFile(token.NewFileSet(), src, nil, 0)
	if err != nil {
		t.Fatalf("parsing %s: %v", src, err)
	}
	var routes []string
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "GenerateRoutes" || fn.Recv == nil {
			continue
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			switch sel.Sel.Name {
			case "GET", "POST", "DELETE", "HEAD", "PUT", "PATCH":
			default:
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			path, err := strconv.Unquote(lit.Value)
			if err == nil {
				routes = append(routes, sel.Sel.Name+" "+path)
			}
			return true
		})
	}
	return routes
}
