package keystore

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/droverhq/drover/pkg/apikey"
	"github.com/droverhq/drover/services/proxy/internal/auth"
	"github.com/droverhq/drover/services/proxy/internal/ollamaapi"
)

// API is /api/keys, the admin's view of every key. The auth middleware
// lets only admin keys reach it. Secrets appear once, in the answer that
// creates (or rotates) a key; digests never leave the proxy.
type API struct {
	Store *Store
	// Config are the config file's keys (Source "config", no digest needed):
	// listed, and read-only here.
	Config []apikey.Record
	Log    *slog.Logger
}

// Routes mounts the key management routes on r.
func (a *API) Routes(r chi.Router) {
	r.Get("/api/keys", a.list)
	r.Post("/api/keys", a.create)
	r.Patch("/api/keys/{id}", a.change)
	r.Delete("/api/keys/{id}", a.revoke)
	r.Post("/api/keys/{id}/rotate", a.rotate)
}

const secretNote = "store this secret now: Drover keeps only its SHA-256 digest and cannot show it again"

// created is the answer to a create or a rotate: the key and, this once,
// its secret.
func created(rec apikey.Record, secret string) apikey.View {
	v := rec.View()
	v.Secret, v.Note = secret, secretNote
	return v
}

func (a *API) list(w http.ResponseWriter, r *http.Request) {
	out := make([]apikey.View, 0, len(a.Config))
	for _, c := range a.Config {
		out = append(out, c.View())
	}
	for _, b := range a.Store.Records() {
		out = append(out, b.View())
	}
	slices.SortStableFunc(out, func(x, y apikey.View) int { return strings.Compare(x.ID, y.ID) })
	writeJSON(w, http.StatusOK, map[string]any{"keys": out})
}

type createRequest struct {
	ID          string                   `json:"id"`
	Role        string                   `json:"role"`
	Models      []string                 `json:"models"`
	Limits      apikey.Limits            `json:"limits"`
	ModelLimits map[string]apikey.Limits `json:"model_limits"`
	Weight      *int                     `json:"weight"`
	Class       string                   `json:"class"`
}

func (a *API) create(w http.ResponseWriter, r *http.Request) {
	if !a.enabled(w) {
		return
	}
	var req createRequest
	if !decode(w, r, &req) {
		return
	}
	if req.Role == "" {
		req.Role = apikey.RoleClient
	}
	models := cleanModels(req.Models)
	rec := apikey.Record{ID: req.ID, Role: req.Role, Models: models, Limits: req.Limits,
		ModelLimits: cleanModelLimits(req.ModelLimits), Weight: 1, Class: req.Class}
	if req.Weight != nil {
		rec.Weight = *req.Weight
	}
	if rec.Class == "" {
		rec.Class = apikey.ClassInteractive
	}
	if err := errors.Join(apikey.ValidID(req.ID), apikey.ValidRole(req.Role), apikey.ValidPatterns(models), validLimits(rec)); err != nil {
		ollamaapi.WriteError(w, http.StatusBadRequest, oneLine(err))
		return
	}
	if a.fromConfig(req.ID) {
		ollamaapi.WriteError(w, http.StatusConflict, fmt.Sprintf("key %s exists: it is defined in the config file", req.ID))
		return
	}
	secret := apikey.NewSecret()
	rec, err := a.Store.Create(r.Context(), rec, secret)
	if err != nil {
		a.fail(w, req.ID, "creating", err)
		return
	}
	a.Log.Info("API key created", "key", rec.ID, "role", rec.Role, "models", rec.Models, "limits", rec.Limits,
		"model_limits", rec.ModelLimits, "weight", rec.Weight, "class", rec.Class, "by", auth.KeyID(r.Context()))
	writeJSON(w, http.StatusCreated, created(rec, secret))
}

// changeRequest is a PATCH: only what it names changes. Limits merge
// field by field (0 lifts a limit); a model_limits entry merges the same
// way, and null (or every field 0) removes the model's limits.
type changeRequest struct {
	Role        *string                 `json:"role"`
	Models      *[]string               `json:"models"`
	Limits      *limitsPatch            `json:"limits"`
	ModelLimits map[string]*limitsPatch `json:"model_limits"`
	Weight      *int                    `json:"weight"`
	Class       *string                 `json:"class"`
}

// limitsPatch is apikey.Limits with every field optional.
type limitsPatch struct {
	RequestsPerMinute *int64 `json:"requests_per_minute"`
	TokensPerMinute   *int64 `json:"tokens_per_minute"`
	Concurrent        *int64 `json:"concurrent"`
	TokensPerDay      *int64 `json:"tokens_per_day"`
	TokensPerMonth    *int64 `json:"tokens_per_month"`
}

// apply sets the fields p names in l.
func (p limitsPatch) apply(l *apikey.Limits) {
	for _, f := range []struct {
		from *int64
		to   *int64
	}{{p.RequestsPerMinute, &l.RequestsPerMinute}, {p.TokensPerMinute, &l.TokensPerMinute},
		{p.Concurrent, &l.Concurrent}, {p.TokensPerDay, &l.TokensPerDay}, {p.TokensPerMonth, &l.TokensPerMonth}} {
		if f.from != nil {
			*f.to = *f.from
		}
	}
}

func (c changeRequest) empty() bool {
	return c.Role == nil && c.Models == nil && c.Limits == nil && c.ModelLimits == nil && c.Weight == nil && c.Class == nil
}

// applyTo makes the changes c names to rec.
func (c changeRequest) applyTo(rec *apikey.Record, models []string) {
	if c.Role != nil {
		rec.Role = *c.Role
	}
	if c.Models != nil {
		rec.Models = models
	}
	if c.Limits != nil {
		c.Limits.apply(&rec.Limits)
	}
	for m, p := range c.ModelLimits {
		m = strings.TrimSpace(m)
		if p == nil {
			delete(rec.ModelLimits, m)
			continue
		}
		l := rec.ModelLimits[m]
		p.apply(&l)
		if rec.ModelLimits == nil {
			rec.ModelLimits = map[string]apikey.Limits{}
		}
		rec.ModelLimits[m] = l
	}
	rec.ModelLimits = cleanModelLimits(rec.ModelLimits)
	if c.Weight != nil {
		rec.Weight = *c.Weight
	}
	if c.Class != nil {
		rec.Class = *c.Class
	}
}

func (a *API) change(w http.ResponseWriter, r *http.Request) {
	id, ok := a.target(w, r)
	if !ok {
		return
	}
	var req changeRequest
	if !decode(w, r, &req) {
		return
	}
	if req.empty() {
		ollamaapi.WriteError(w, http.StatusBadRequest, "nothing to change: give role, models, limits, model_limits, weight or class")
		return
	}
	var models []string
	if req.Models != nil {
		models = cleanModels(*req.Models)
	}
	var errs []error
	if req.Role != nil {
		errs = append(errs, apikey.ValidRole(*req.Role))
	}
	// The change alone is checked first, so that a bad value is refused
	// before the bucket is read.
	alone := apikey.Record{Weight: 1, Class: apikey.ClassInteractive}
	req.applyTo(&alone, models)
	if err := errors.Join(append(errs, apikey.ValidPatterns(models), validLimits(alone))...); err != nil {
		ollamaapi.WriteError(w, http.StatusBadRequest, oneLine(err))
		return
	}
	rec, err := a.Store.Change(r.Context(), id, func(rec *apikey.Record) error {
		// Keys stored before limits existed have no weight or class.
		rec.Weight, rec.Class = max(rec.Weight, 1), cmp.Or(rec.Class, apikey.ClassInteractive)
		req.applyTo(rec, models)
		return validLimits(*rec)
	})
	if err != nil {
		a.fail(w, id, "changing", err)
		return
	}
	a.Log.Info("API key changed", "key", id, "role", rec.Role, "models", rec.Models, "limits", rec.Limits,
		"model_limits", rec.ModelLimits, "weight", rec.Weight, "class", rec.Class, "by", auth.KeyID(r.Context()))
	writeJSON(w, http.StatusOK, rec.View())
}

func (a *API) revoke(w http.ResponseWriter, r *http.Request) {
	id, ok := a.target(w, r)
	if !ok {
		return
	}
	if err := a.Store.Revoke(r.Context(), id); err != nil {
		a.fail(w, id, "revoking", err)
		return
	}
	a.Log.Info("API key revoked", "key", id, "by", auth.KeyID(r.Context()))
	writeJSON(w, http.StatusOK, map[string]string{"revoked": id})
}

// rotate gives a key a new secret; the old one stops working everywhere.
func (a *API) rotate(w http.ResponseWriter, r *http.Request) {
	id, ok := a.target(w, r)
	if !ok {
		return
	}
	secret := apikey.NewSecret()
	rec, err := a.Store.Change(r.Context(), id, func(rec *apikey.Record) error {
		rec.Digest = apikey.Digest(secret)
		return nil
	})
	if err != nil {
		a.fail(w, id, "rotating", err)
		return
	}
	a.Log.Info("API key rotated", "key", id, "by", auth.KeyID(r.Context()))
	writeJSON(w, http.StatusOK, created(rec, secret))
}

// target is the key a change names: a valid id, not from the config file,
// with a bucket to change it in.
func (a *API) target(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := chi.URLParam(r, "id")
	if err := apikey.ValidID(id); err != nil {
		ollamaapi.WriteError(w, http.StatusBadRequest, err.Error())
		return "", false
	}
	if a.fromConfig(id) {
		ollamaapi.WriteError(w, http.StatusConflict, fmt.Sprintf("key %s is defined in the config file; change it there", id))
		return "", false
	}
	return id, a.enabled(w)
}

func (a *API) enabled(w http.ResponseWriter) bool {
	if !a.Store.Enabled() {
		ollamaapi.WriteError(w, http.StatusServiceUnavailable, ErrNoNATS.Error())
		return false
	}
	return true
}

func (a *API) fromConfig(id string) bool {
	return slices.ContainsFunc(a.Config, func(r apikey.Record) bool { return r.ID == id })
}

// fail answers a failed change: what the caller can fix is 4xx, NATS
// being unreachable is 503.
func (a *API) fail(w http.ResponseWriter, id, doing string, err error) {
	switch {
	case errors.Is(err, ErrExists):
		ollamaapi.WriteError(w, http.StatusConflict, fmt.Sprintf("key %s exists: revoke it first or choose another id", id))
	case errors.Is(err, ErrNotFound):
		ollamaapi.WriteError(w, http.StatusNotFound, fmt.Sprintf("no key %s", id))
	case errors.Is(err, errInvalid):
		ollamaapi.WriteError(w, http.StatusBadRequest, oneLine(err))
	case errors.Is(err, ErrConflict):
		ollamaapi.WriteError(w, http.StatusConflict, fmt.Sprintf("key %s was changed by someone else meanwhile; nothing was written, try again", id))
	default:
		a.Log.Error("key management: the key bucket did not answer", "doing", doing, "key", id, "err", err)
		ollamaapi.WriteError(w, http.StatusServiceUnavailable, fmt.Sprintf("%s key %s: the key bucket is unreachable (NATS): %v", doing, id, err))
	}
}

// decode reads a JSON body of at most 64 KB with no unknown fields.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		msg := "invalid JSON body: " + err.Error()
		if errors.Is(err, io.EOF) {
			msg = "missing JSON body"
		}
		ollamaapi.WriteError(w, http.StatusBadRequest, msg)
		return false
	}
	return true
}

// errInvalid marks a change that makes a stored record invalid (a 400).
var errInvalid = errors.New("invalid")

type invalidError struct{ err error }

func (e invalidError) Error() string        { return e.err.Error() }
func (e invalidError) Is(target error) bool { return target == errInvalid }

// validLimits checks rec's limits, weight and class, each error naming
// its field as the request does ("limits.tokens_per_day: ...").
func validLimits(rec apikey.Record) error {
	var errs []error
	if err := rec.Limits.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("limits.%w", err))
	}
	models := slices.Sorted(maps.Keys(rec.ModelLimits))
	for _, m := range models {
		if strings.TrimSpace(m) == "" {
			errs = append(errs, errors.New("model_limits: a model name must not be empty"))
			continue
		}
		if err := rec.ModelLimits[m].Validate(); err != nil {
			errs = append(errs, fmt.Errorf("model_limits.%s.%w", m, err))
		}
	}
	if rec.Weight < 1 {
		errs = append(errs, fmt.Errorf("weight: must be at least 1, got %d", rec.Weight))
	}
	if err := apikey.ValidClass(rec.Class); err != nil || rec.Class == "" {
		errs = append(errs, fmt.Errorf("class: must be %s, got %q", strings.Join(apikey.Classes, " or "), rec.Class))
	}
	if err := errors.Join(errs...); err != nil {
		return invalidError{err}
	}
	return nil
}

// cleanModelLimits trims model names and drops entries that limit
// nothing; an empty map is nil.
func cleanModelLimits(in map[string]apikey.Limits) map[string]apikey.Limits {
	var out map[string]apikey.Limits
	for m, l := range in {
		if l.IsZero() {
			continue
		}
		if out == nil {
			out = map[string]apikey.Limits{}
		}
		out[strings.TrimSpace(m)] = l
	}
	return out
}

// cleanModels trims the patterns; an empty list is nil (every model).
func cleanModels(in []string) []string {
	var out []string
	for _, m := range in {
		out = append(out, strings.TrimSpace(m))
	}
	return out
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v) //nolint:errcheck // the client may be gone
}
