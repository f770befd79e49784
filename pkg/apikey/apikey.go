// Package apikey is the shape of an API key as Drover stores it: an id, a
// role, an optional model allow-list, and the SHA-256 digest of the secret
// (never the secret). The proxies keep run-time keys as Records in a
// JetStream key-value bucket (one entry per id); droverctl reads and writes
// them through the proxies' /api/keys.
package apikey

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"
	"time"
)

// Roles. A client may run inference on every API, list, show and see its
// own usage; an admin may also manage models, caches, keys and config, and
// see every key's usage.
const (
	RoleClient = "client"
	RoleAdmin  = "admin"
)

// Record is one key.
type Record struct {
	ID     string `json:"id"`
	Role   string `json:"role"`
	Digest string `json:"digest,omitempty"` // hex SHA-256 of the secret
	// Models are glob patterns (path.Match) of the only models the key may
	// use and see; empty means every model.
	Models []string `json:"models,omitempty"`
	// Limits apply to all the key's requests; ModelLimits to its requests
	// for one model (by name as requested, normalised like catalog names),
	// on top of Limits. Zero fields are unlimited.
	Limits      Limits            `json:"limits,omitzero"`
	ModelLimits map[string]Limits `json:"model_limits,omitempty"`
	// Weight is the key's share of the queue against other keys of its
	// class (default 1); Class its priority class (default interactive).
	Weight  int       `json:"weight,omitempty"`
	Class   string    `json:"class,omitempty"`
	Created time.Time `json:"created,omitzero"`
	Updated time.Time `json:"updated,omitzero"`
	// Source is "config" for keys from the config file (read-only at run
	// time) and "bucket" for keys managed with droverctl.
	Source string `json:"source,omitempty"`
}

// Limits bound a key's use. Each field is optional: zero is unlimited.
// Minutes are UTC clock minutes; days and months UTC calendar ones.
type Limits struct {
	RequestsPerMinute int64 `json:"requests_per_minute,omitempty" yaml:"requests_per_minute"`
	TokensPerMinute   int64 `json:"tokens_per_minute,omitempty" yaml:"tokens_per_minute"`
	Concurrent        int64 `json:"concurrent,omitempty" yaml:"concurrent"`
	TokensPerDay      int64 `json:"tokens_per_day,omitempty" yaml:"tokens_per_day"`
	TokensPerMonth    int64 `json:"tokens_per_month,omitempty" yaml:"tokens_per_month"`
}

// IsZero reports whether l limits nothing.
func (l Limits) IsZero() bool { return l == Limits{} }

// Validate reports a negative limit, naming its field.
func (l Limits) Validate() error {
	for name, v := range map[string]int64{"requests_per_minute": l.RequestsPerMinute, "tokens_per_minute": l.TokensPerMinute,
		"concurrent": l.Concurrent, "tokens_per_day": l.TokensPerDay, "tokens_per_month": l.TokensPerMonth} {
		if v < 0 {
			return fmt.Errorf("%s: must not be negative, got %d", name, v)
		}
	}
	return nil
}

// Priority classes, highest first: a released slot goes to the highest
// class with a waiter. A request may lower its class (header
// X-Drover-Priority), never raise it.
const (
	ClassInteractive = "interactive"
	ClassBatch       = "batch"
)

// Classes lists the classes, highest first.
var Classes = []string{ClassInteractive, ClassBatch}

// ValidClass reports whether c is a class ("" is the default, interactive).
func ValidClass(c string) error {
	if c != "" && c != ClassInteractive && c != ClassBatch {
		return fmt.Errorf("class %q: must be interactive or batch", c)
	}
	return nil
}

// View is a key as /api/keys shows it: never its digest; Secret and Note
// only in the answer that creates or rotates it.
type View struct {
	ID     string   `json:"id"`
	Role   string   `json:"role"`
	Models []string `json:"models"`
	Source string   `json:"source"`
	// Limits, ModelLimits, Weight and Class as stored (see Record).
	Limits      Limits            `json:"limits,omitzero"`
	ModelLimits map[string]Limits `json:"model_limits,omitempty"`
	Weight      int               `json:"weight,omitempty"`
	Class       string            `json:"class,omitempty"`
	Created     time.Time         `json:"created,omitzero"`
	Updated     time.Time         `json:"updated,omitzero"`
	Secret      string            `json:"secret,omitempty"`
	Note        string            `json:"note,omitempty"`
}

// View is r as the API shows it.
func (r Record) View() View {
	models := r.Models
	if models == nil {
		models = []string{}
	}
	return View{ID: r.ID, Role: r.Role, Models: models, Source: r.Source, Limits: r.Limits, ModelLimits: r.ModelLimits,
		Weight: r.Weight, Class: r.Class, Created: r.Created, Updated: r.Updated}
}

// SecretPrefix starts every generated secret, so that leaked Drover keys
// are easy to find with secret scanners.
const SecretPrefix = "drv_"

// NewSecret returns a fresh random secret (256 bits).
func NewSecret() string {
	var b [32]byte
	rand.Read(b[:]) //nolint:errcheck // never fails (crypto/rand)
	return SecretPrefix + hex.EncodeToString(b[:])
}

// Digest is the stored form of a secret.
func Digest(secret string) string {
	d := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(d[:])
}

var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// ValidID reports whether id can name a key: 1 to 64 letters, digits, '_',
// '.' or '-', starting with a letter or digit (it is a KV key and appears
// in usage records).
func ValidID(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("key id %q: use 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit", id)
	}
	return nil
}

// ValidRole reports whether r is a role.
func ValidRole(r string) error {
	if r != RoleClient && r != RoleAdmin {
		return fmt.Errorf("role %q: must be client or admin", r)
	}
	return nil
}

// ValidPatterns reports the first pattern that is not a usable glob.
func ValidPatterns(patterns []string) error {
	for _, p := range patterns {
		if _, err := path.Match(p, ""); err != nil || strings.TrimSpace(p) == "" {
			return fmt.Errorf("model pattern %q: must be a glob such as llama3*", p)
		}
	}
	return nil
}

// Validate checks a stored record.
func (r Record) Validate() error {
	d, err := hex.DecodeString(r.Digest)
	var limitErrs []error
	if err := r.Limits.Validate(); err != nil {
		limitErrs = append(limitErrs, fmt.Errorf("limits.%w", err))
	}
	for m, l := range r.ModelLimits {
		if err := l.Validate(); err != nil {
			limitErrs = append(limitErrs, fmt.Errorf("model_limits.%s.%w", m, err))
		}
	}
	if r.Weight < 0 {
		limitErrs = append(limitErrs, fmt.Errorf("weight: must not be negative, got %d", r.Weight))
	}
	return errors.Join(ValidID(r.ID), ValidRole(r.Role), ValidPatterns(r.Models), ValidClass(r.Class), errors.Join(limitErrs...),
		func() error {
			if err != nil || len(d) != sha256.Size {
				return fmt.Errorf("key %q: digest must be 64 hex digits", r.ID)
			}
			return nil
		}())
}

// AllowsModel reports whether a key limited to patterns may use model.
// No patterns allow everything. A name without a tag also matches as
// name:latest, and name:latest as name, as Ollama treats them alike.
func AllowsModel(patterns []string, model string) bool {
	if len(patterns) == 0 {
		return true
	}
	names := []string{model}
	if base, ok := strings.CutSuffix(model, ":latest"); ok {
		names = append(names, base)
	} else if !strings.Contains(model, ":") {
		names = append(names, model+":latest")
	}
	for _, p := range patterns {
		for _, n := range names {
			if ok, _ := path.Match(p, n); ok {
				return true
			}
		}
	}
	return false
}
