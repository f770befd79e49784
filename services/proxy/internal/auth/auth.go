// Package auth decides who is calling and what they may do. A key is
// presented as "Authorization: Bearer <key>" (or Anthropic's x-api-key);
// the query parameter api_key only where a browser cannot send a header
// (EventSource, the dashboard's first load). Keys come from the config file
// (fixed) and from the JetStream key bucket (replaced as it changes); only
// SHA-256 digests are held, and only ids and roles ever reach logs, usage
// records and the request context.
package auth

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/pkg/config"
)

// Anonymous is the key id of requests when no key exists anywhere (open
// access, loopback or auth.open).
const Anonymous = "anonymous"

// Principal is who a request acts as.
type Principal struct {
	ID   string
	Role string // apikey.RoleAdmin or apikey.RoleClient
	// Models is the key's allow-list (glob patterns); nil allows all.
	Models []string
	// Limits, ModelLimits, Weight and Class are the key's limits and its
	// place in the queue (apikey.Record).
	Limits      apikey.Limits
	ModelLimits map[string]apikey.Limits
	Weight      int
	Class       string
}

// Admin reports whether p may manage the fleet.
func (p Principal) Admin() bool { return p.Role == apikey.RoleAdmin }

// AllowsModel reports whether p may use or see model.
func (p Principal) AllowsModel(model string) bool { return apikey.AllowsModel(p.Models, model) }

// open is the principal of every request when no key exists: whoever can
// reach a loopback (or explicitly open) listener owns the fleet.
var open = Principal{ID: Anonymous, Role: apikey.RoleAdmin, Weight: 1, Class: apikey.ClassInteractive}

type ctxKey struct{}

// FromContext returns the request's principal; without one (internal
// calls, tests), the open principal.
func FromContext(ctx context.Context) Principal {
	if p, ok := ctx.Value(ctxKey{}).(Principal); ok {
		return p
	}
	return open
}

// WithPrincipal returns ctx acting as p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// KeyID returns the id of the key that authenticated the request.
func KeyID(ctx context.Context) string { return FromContext(ctx).ID }

// AllowsModel reports whether the request's key may use model.
func AllowsModel(ctx context.Context, model string) bool {
	return FromContext(ctx).AllowsModel(model)
}

type keySet map[[sha256.Size]byte]Principal

// Keys is the set of valid keys: the config file's, fixed, and the
// bucket's, swapped whole on every change.
type Keys struct {
	fixed  keySet
	ids    map[string]bool // the config file's ids
	bucket atomic.Pointer[keySet]
}

// New holds the config file's keys.
func New(keys []config.APIKey) *Keys {
	k := &Keys{fixed: keySet{}, ids: map[string]bool{}}
	for _, c := range keys {
		k.fixed[sha256.Sum256([]byte(c.Key.Reveal()))] = Principal{ID: c.ID, Role: c.Role, Models: c.Models,
			Limits: c.Limits, ModelLimits: c.ModelLimits, Weight: c.Weight, Class: c.Class}
		k.ids[c.ID] = true
	}
	k.bucket.Store(&keySet{})
	return k
}

// FromConfig reports whether id names a key of the config file (those
// cannot be changed at run time).
func (k *Keys) FromConfig(id string) bool { return k.ids[id] }

// SetBucket replaces the run-time keys with recs. Records that do not
// validate, and ids that the config file defines, are skipped.
func (k *Keys) SetBucket(recs []apikey.Record) (skipped []string) {
	set := keySet{}
	for _, r := range recs {
		d, err := hex.DecodeString(r.Digest)
		if r.Validate() != nil || err != nil || k.ids[r.ID] {
			skipped = append(skipped, r.ID)
			continue
		}
		set[[sha256.Size]byte(d)] = Principal{ID: r.ID, Role: r.Role, Models: r.Models,
			Limits: r.Limits, ModelLimits: r.ModelLimits, Weight: max(r.Weight, 1), Class: cmp.Or(r.Class, apikey.ClassInteractive)}
	}
	k.bucket.Store(&set)
	return skipped
}

// Principals returns every key's principal, the config file's and the
// bucket's, sorted by id (for listing every key's limits).
func (k *Keys) Principals() []Principal {
	out := make([]Principal, 0, len(k.fixed)+len(*k.bucket.Load()))
	for _, set := range []keySet{k.fixed, *k.bucket.Load()} {
		for _, p := range set {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b Principal) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Open reports whether no key exists anywhere, so every caller is let in
// as the anonymous admin.
func (k *Keys) Open() bool { return len(k.fixed) == 0 && len(*k.bucket.Load()) == 0 }

// Lookup returns the principal of a presented secret. The secret is hashed
// first, so the lookup's timing depends on its digest, not on how much of a
// real key it shares.
func (k *Keys) Lookup(secret string) (Principal, bool) {
	d := sha256.Sum256([]byte(secret))
	if p, ok := k.fixed[d]; ok {
		return p, true
	}
	p, ok := (*k.bucket.Load())[d]
	return p, ok
}

// Access is what a route requires.
type Access int

const (
	// Public routes serve anyone; a valid key presented still identifies
	// the caller (an admin sees /health in detail).
	Public Access = iota
	// Client routes need any valid key.
	Client
	// Admin routes need a key with the admin role.
	Admin
)

// Policy tells the middleware what each request needs and how to refuse.
type Policy struct {
	// Access is what r needs.
	Access func(r *http.Request) Access
	// QueryKey reports whether r may carry its key as ?api_key= (routes a
	// browser reaches without headers).
	QueryKey func(r *http.Request) bool
	// Deny writes a refusal (401 or 403) in r's API format.
	Deny func(w http.ResponseWriter, r *http.Request, status int, msg string)
}

// Messages of the refusals.
const (
	MsgMissing = "missing API key: send Authorization: Bearer <key>"
	MsgInvalid = "invalid API key"
)

// Middleware authenticates every request and enforces p.
func (k *Keys) Middleware(p Policy) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			need := p.Access(r)
			secret := presented(r, p.QueryKey(r))
			if k.Open() {
				next.ServeHTTP(w, r.WithContext(WithPrincipal(r.Context(), open)))
				return
			}
			who, ok := Principal{}, false
			if secret != "" {
				who, ok = k.Lookup(secret)
			}
			switch {
			case need == Public:
				if ok {
					r = r.WithContext(WithPrincipal(r.Context(), who))
				} else {
					r = r.WithContext(WithPrincipal(r.Context(), Principal{ID: Anonymous}))
				}
				next.ServeHTTP(w, r)
				return
			case secret == "":
				w.Header().Set("WWW-Authenticate", `Bearer realm="drover"`)
				p.Deny(w, r, http.StatusUnauthorized, MsgMissing)
				return
			case !ok:
				w.Header().Set("WWW-Authenticate", `Bearer realm="drover"`)
				p.Deny(w, r, http.StatusUnauthorized, MsgInvalid)
				return
			case need == Admin && !who.Admin():
				p.Deny(w, r, http.StatusForbidden, "key "+who.ID+" may not do this: it needs the admin role")
				return
			}
			next.ServeHTTP(w, r.WithContext(WithPrincipal(r.Context(), who)))
		})
	}
}

// presented returns the key the request carries, and removes api_key from
// the URL so that it goes no further (no handler, backend or log sees it).
func presented(r *http.Request, queryOK bool) string {
	var secret string
	if q := r.URL.Query(); q.Has("api_key") && queryOK {
		secret = q.Get("api_key")
		q.Del("api_key")
		r.URL.RawQuery = q.Encode()
		r.RequestURI = r.URL.RequestURI()
	}
	if h := r.Header.Get("X-Api-Key"); h != "" {
		secret = strings.TrimSpace(h)
	}
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, _ := strings.Cut(h, " ")
		if strings.EqualFold(scheme, "Bearer") {
			secret = strings.TrimSpace(token)
		}
	}
	return secret
}
