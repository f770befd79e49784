// Package auth checks client API keys and carries the key's id in the
// request context. Keys are compared by SHA-256 digest in constant time, and
// only ids ever reach logs and usage records.
package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/droverhq/drover/pkg/config"
)

// Anonymous is the key id of requests when no keys are configured.
const Anonymous = "anonymous"

type ctxKey struct{}

// KeyID returns the id of the key that authenticated the request.
func KeyID(ctx context.Context) string {
	if id, ok := ctx.Value(ctxKey{}).(string); ok {
		return id
	}
	return Anonymous
}

// WithKeyID returns ctx carrying id (for tests and internal calls).
func WithKeyID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// Keys is the configured set; empty means open access.
type Keys struct {
	digests [][32]byte
	ids     []string
}

// New hashes the configured keys.
func New(keys []config.APIKey) *Keys {
	k := &Keys{}
	for _, c := range keys {
		k.digests = append(k.digests, sha256.Sum256([]byte(c.Key.Reveal())))
		k.ids = append(k.ids, c.ID)
	}
	return k
}

// Lookup returns the id for a presented key. Every configured key is
// compared, so timing does not reveal which one matched.
func (k *Keys) Lookup(presented string) (string, bool) {
	d := sha256.Sum256([]byte(presented))
	found := -1
	for i := range k.digests {
		if subtle.ConstantTimeCompare(d[:], k.digests[i][:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return "", false
	}
	return k.ids[found], true
}

// Middleware requires a key (Bearer header, Anthropic's x-api-key header,
// or ?api_key= for browsers' EventSource) when keys are configured. deny writes the refusal in the
// route's API format. Paths in open pass without a key.
func (k *Keys) Middleware(open func(path string) bool, deny func(w http.ResponseWriter, r *http.Request, msg string)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if len(k.digests) == 0 || open(r.URL.Path) {
				next.ServeHTTP(w, r)
				return
			}
			presented := r.URL.Query().Get("api_key")
			if h := r.Header.Get("X-Api-Key"); h != "" {
				presented = strings.TrimSpace(h)
			}
			if h := r.Header.Get("Authorization"); h != "" {
				scheme, token, _ := strings.Cut(h, " ")
				if strings.EqualFold(scheme, "Bearer") {
					presented = strings.TrimSpace(token)
				}
			}
			if presented == "" {
				deny(w, r, "missing API key: send Authorization: Bearer <key>")
				return
			}
			id, ok := k.Lookup(presented)
			if !ok {
				deny(w, r, "invalid API key")
				return
			}
			next.ServeHTTP(w, r.WithContext(WithKeyID(r.Context(), id)))
		})
	}
}
