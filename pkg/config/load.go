package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/droverhq/drover/pkg/apikey"
)

// EnvPrefix starts every override variable.
const EnvPrefix = "DROVER_"

// Load reads path (optional: "" means defaults plus environment), expands
// ${VAR} references, applies DROVER_ overrides from environ (os.Environ() in
// production), fills defaults and validates.
func Load(path string, environ []string) (*Config, error) {
	cfg := &Config{}
	env := envMap(environ)
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("reading config: %w", err)
		}
		expanded, err := expand(raw, env)
		if err != nil {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(expanded))
		dec.KnownFields(true)
		if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
	}
	if err := applyEnv(cfg, env); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func envMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// expand replaces ${VAR} with the variable's value; an unset variable is an
// error that names the line, so a missing secret is not silently empty.
func expand(raw []byte, env map[string]string) ([]byte, error) {
	var errs []error
	for i, line := range bytes.Split(raw, []byte("\n")) {
		if bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			continue
		}
		for _, m := range envRef.FindAllSubmatch(line, -1) {
			if _, ok := env[string(m[1])]; !ok {
				errs = append(errs, fmt.Errorf("line %d: environment variable %s is not set", i+1, m[1]))
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return envRef.ReplaceAllFunc(raw, func(ref []byte) []byte {
		v := env[string(envRef.FindSubmatch(ref)[1])]
		// Quote so that values with YAML syntax in them stay strings.
		q, _ := yaml.Marshal(v)
		return bytes.TrimRight(q, "\n")
	}), nil
}

// applyEnv sets every field named by a DROVER_ variable, plus the two list
// shorthands. Unknown DROVER_ variables are errors: a typo should not be
// silently ignored.
func applyEnv(cfg *Config, env map[string]string) error {
	if v, ok := env[EnvPrefix+"BACKENDS"]; ok {
		cfg.Backends = nil
		for _, u := range splitList(v) {
			cfg.Backends = append(cfg.Backends, Backend{URL: u})
		}
	}
	if v, ok := env[EnvPrefix+"AUTH_KEYS"]; ok {
		cfg.Auth.Keys = nil
		for i, item := range splitList(v) {
			id, key, found := strings.Cut(item, ":")
			if !found {
				return fmt.Errorf("%sAUTH_KEYS item %d: want id:key or id:key:role", EnvPrefix, i)
			}
			role := ""
			if k, r, ok := cutLast(key, ":"); ok && apikey.ValidRole(r) == nil {
				key, role = k, r
			}
			cfg.Auth.Keys = append(cfg.Auth.Keys, APIKey{ID: id, Key: Secret(key), Role: role})
		}
	}
	var errs []error
	for name, val := range env {
		if !strings.HasPrefix(name, EnvPrefix) || name == EnvPrefix+"BACKENDS" || name == EnvPrefix+"AUTH_KEYS" || notForServices[name] {
			continue
		}
		path := strings.Split(strings.ToLower(strings.TrimPrefix(name, EnvPrefix)), "_")
		if err := setPath(reflect.ValueOf(cfg).Elem(), path, val); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// notForServices are DROVER_ variables that deployments set for other
// programs (nats-server reads the passwords, compose and make run build
// DROVER_AUTH_KEYS from the admin key; DROVER_CONFIG names the file): a
// service that sees them in a shared environment ignores them rather than
// refusing them as typos.
var notForServices = map[string]bool{
	EnvPrefix + "CONFIG":                   true,
	EnvPrefix + "ADMIN_KEY":                true,
	EnvPrefix + "NATS_PROXY_PASSWORD":      true,
	EnvPrefix + "NATS_AGGREGATOR_PASSWORD": true,
}

// cutLast is strings.Cut at the last sep.
func cutLast(s, sep string) (before, after string, found bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return s, "", false
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// setPath walks v by yaml key words. Keys contain underscores themselves
// (max_wait), so each struct level tries the longest run of words that
// names a field.
func setPath(v reflect.Value, words []string, val string) error {
	switch v.Kind() {
	case reflect.Struct:
		t := v.Type()
		for n := len(words); n >= 1; n-- {
			key := strings.Join(words[:n], "_")
			for i := 0; i < t.NumField(); i++ {
				if tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]; tag == key {
					return setPath(v.Field(i), words[n:], val)
				}
			}
		}
		return fmt.Errorf("no such configuration key")
	case reflect.Slice:
		if len(words) == 0 {
			return fmt.Errorf("set the list in the file or with a shorthand variable")
		}
		idx, err := strconv.Atoi(words[0])
		if err != nil || idx < 0 || idx > 1000 {
			return fmt.Errorf("want a list index, got %q", words[0])
		}
		for v.Len() <= idx {
			v.Set(reflect.Append(v, reflect.Zero(v.Type().Elem())))
		}
		return setPath(v.Index(idx), words[1:], val)
	}
	if len(words) != 0 {
		return fmt.Errorf("no such configuration key")
	}
	return setScalar(v, val)
}

func setScalar(v reflect.Value, val string) error {
	if v.Kind() == reflect.Pointer {
		// An optional value (routing.affinity.share): set, not defaulted.
		p := reflect.New(v.Type().Elem())
		if err := setScalar(p.Elem(), val); err != nil {
			return err
		}
		v.Set(p)
		return nil
	}
	if v.Type() == reflect.TypeOf(time.Duration(0)) {
		d, err := time.ParseDuration(val)
		if err != nil {
			return fmt.Errorf("want a duration like 30s, got %q", val)
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(val)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(val, 10, 64)
		if err != nil {
			return fmt.Errorf("want an integer, got %q", val)
		}
		v.SetInt(n)
	case reflect.Bool:
		b, err := strconv.ParseBool(val)
		if err != nil {
			return fmt.Errorf("want true or false, got %q", val)
		}
		v.SetBool(b)
	default:
		return fmt.Errorf("cannot be set from the environment")
	}
	return nil
}

// FromStruct fills defaults into a Config built in code (tests, embedding)
// and validates it, as Load does for a file.
func FromStruct(c *Config) (*Config, error) {
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}
