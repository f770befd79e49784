package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/droverhq/drover/pkg/apikey"
)

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.Replica == "" {
		host, _ := os.Hostname()
		c.Replica = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	for i := range c.Backends {
		b := &c.Backends[i]
		fillZero(b, DefaultBackend())
		if b.Name == "" {
			if u, err := url.Parse(b.URL); err == nil && u.Host != "" {
				b.Name = u.Host
			}
		}
		b.URL = strings.TrimRight(b.URL, "/")
	}
	fillZero(&c.Routing, DefaultRouting())
	fillZero(&c.Cache, DefaultCache())
	fillZero(&c.Health, DefaultHealth())
	fillZero(&c.NATS, DefaultNATS())
	fillZero(&c.Usage, DefaultUsage())
	fillZero(&c.ClickHouse, DefaultClickHouse())
	fillZero(&c.Aggregator, DefaultAggregator())
	fillZero(&c.Auth, DefaultAuth())
	fillZero(&c.Limits, DefaultLimits())
	fillZero(&c.Server, DefaultServer())
	for i := range c.Auth.Keys {
		if c.Auth.Keys[i].Role == "" {
			c.Auth.Keys[i].Role = apikey.RoleClient
		}
		if c.Auth.Keys[i].Weight == 0 {
			c.Auth.Keys[i].Weight = 1
		}
		if c.Auth.Keys[i].Class == "" {
			c.Auth.Keys[i].Class = apikey.ClassInteractive
		}
	}
	if c.Aggregator.Instance == "" {
		c.Aggregator.Instance = c.Replica
	}
}

// Validate reports every problem at once, each prefixed with its key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	names := map[string]int{}
	for i, b := range c.Backends {
		key := fmt.Sprintf("backends[%d]", i)
		u, err := url.Parse(b.URL)
		switch {
		case b.URL == "":
			bad(key+".url", "is required")
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			bad(key+".url", "must be an http or https URL, got %q", b.URL)
		}
		if b.Type != "ollama" && b.Type != "openai" {
			bad(key+".type", "must be ollama or openai, got %q", b.Type)
		}
		if b.MaxConcurrency < 0 {
			bad(key+".max_concurrency", "must not be negative")
		}
		if b.Weight < 0 {
			bad(key+".weight", "must not be negative")
		}
		if j, dup := names[b.Name]; dup && b.Name != "" {
			bad(key+".name", "%q is already the name of backends[%d]", b.Name, j)
		}
		names[b.Name] = i
	}
	for model, targets := range c.Aliases {
		for i, t := range targets {
			key := fmt.Sprintf("aliases.%s[%d]", model, i)
			if _, ok := names[t.Backend]; !ok {
				bad(key+".backend", "no backend is named %q", t.Backend)
			}
			if t.Model == "" {
				bad(key+".model", "is required")
			}
		}
	}
	positive := map[string]int{
		"routing.max_concurrency":  c.Routing.MaxConcurrency,
		"routing.queue.max_length": c.Routing.Queue.MaxLength,
		"routing.max_attempts":     c.Routing.MaxAttempts,
		"health.failure_threshold": c.Health.FailureThreshold,
		"nats.partitions":          c.NATS.Partitions,
		"usage.queue_size":         c.Usage.QueueSize,
		"usage.batch_size":         c.Usage.BatchSize,
		"aggregator.batch_size":    c.Aggregator.BatchSize,
		"aggregator.fetch_batch":   c.Aggregator.FetchBatch,
	}
	notNegative(bad, positive)
	notNegative(bad, map[string]time.Duration{
		"routing.queue.max_wait":     c.Routing.Queue.MaxWait,
		"routing.connect_timeout":    c.Routing.ConnectTimeout,
		"routing.header_timeout":     c.Routing.HeaderTimeout,
		"routing.first_byte_timeout": c.Routing.FirstByteTimeout,
		"routing.write_timeout":      c.Routing.WriteTimeout,
		"cache.models_ttl":           c.Cache.ModelsTTL,
		"cache.loaded_ttl":           c.Cache.LoadedTTL,
		"health.open_for":            c.Health.OpenFor,
		"health.probe_interval":      c.Health.ProbeInterval,
		"aggregator.flush_interval":  c.Aggregator.FlushInterval,
		"usage.batch_linger":         c.Usage.BatchLinger,
		"aggregator.lease_ttl":       c.Aggregator.LeaseTTL,
		"aggregator.retry_max":       c.Aggregator.RetryMax,
		"clickhouse.read_timeout":    c.ClickHouse.ReadTimeout,
	})
	if r := c.NATS.Replicas; r < 1 || r > 5 {
		bad("nats.replicas", "must be 1 to 5 (JetStream's limit), got %d", r)
	}
	c.Server.validate(bad)
	if c.Cache.ModelsStale < c.Cache.ModelsTTL {
		bad("cache.models_stale", "must be at least cache.models_ttl (%s)", c.Cache.ModelsTTL)
	}
	if c.Cache.LoadedStale < c.Cache.LoadedTTL {
		bad("cache.loaded_stale", "must be at least cache.loaded_ttl (%s)", c.Cache.LoadedTTL)
	}
	if c.Health.OpenMax < c.Health.OpenFor {
		bad("health.open_max", "must be at least health.open_for (%s)", c.Health.OpenFor)
	}
	ids := map[string]bool{}
	keys := map[Secret]bool{}
	for i, k := range c.Auth.Keys {
		key := fmt.Sprintf("auth.keys[%d]", i)
		if k.ID == "" {
			bad(key+".id", "is required")
		} else if ids[k.ID] {
			bad(key+".id", "%q appears twice", k.ID)
		}
		if len(k.Key) < 8 {
			bad(key+".key", "must be at least 8 characters")
		} else if keys[k.Key] {
			bad(key+".key", "is the same as another key")
		}
		ids[k.ID], keys[k.Key] = true, true
		if err := apikey.ValidRole(k.Role); err != nil {
			bad(key+".role", "must be client or admin, got %q", k.Role)
		}
		for j, m := range k.Models {
			if err := apikey.ValidPatterns([]string{m}); err != nil {
				bad(fmt.Sprintf("%s.models[%d]", key, j), "must be a glob pattern such as llama3*, got %q", m)
			}
		}
		if err := k.Limits.Validate(); err != nil {
			bad(key+".limits", "%v", err)
		}
		for m, l := range k.ModelLimits {
			if err := l.Validate(); err != nil {
				bad(key+".model_limits."+m, "%v", err)
			}
		}
		if k.Weight < 0 {
			bad(key+".weight", "must not be negative, got %d", k.Weight)
		}
		if err := apikey.ValidClass(k.Class); err != nil {
			bad(key+".class", "must be interactive or batch, got %q", k.Class)
		}
		if k.ID != "" {
			if err := apikey.ValidID(k.ID); err != nil {
				bad(key+".id", "%v", err)
			}
		}
	}
	for i, o := range c.CORS.Origins {
		if u, err := url.Parse(o); o != "*" && (err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/")) {
			bad(fmt.Sprintf("cors.origins[%d]", i), "must be an origin such as https://app.example.com, got %q", o)
		}
	}
	for key, t := range map[string]TLS{"nats.tls": c.NATS.TLS, "clickhouse.tls": c.ClickHouse.TLS} {
		if (t.CertFile == "") != (t.KeyFile == "") {
			bad(key, "cert_file and key_file go together")
		}
	}
	creds := 0
	for _, set := range []bool{c.NATS.User != "", c.NATS.NKeySeedFile != "", c.NATS.CredsFile != ""} {
		if set {
			creds++
		}
	}
	if creds > 1 {
		bad("nats", "set at most one of user, nkey_seed_file and creds_file")
	}
	if c.NATS.Password != "" && c.NATS.User == "" {
		bad("nats.password", "needs nats.user")
	}
	if a := c.Limits.Admission; a != "reserve" && a != "count" {
		bad("limits.admission", "must be reserve or count, got %q", a)
	}
	if c.Limits.DefaultOutputTokens < 0 {
		bad("limits.default_output_tokens", "must not be negative")
	}
	c.Routing.validateAffinity(bad)
	if c.Routing.Queue.MaxPerKey < 0 {
		bad("routing.queue.max_per_key", "must not be negative")
	}
	if c.Routing.Queue.Headroom() < 0 {
		bad("routing.queue.interactive_headroom", "must not be negative")
	}
	if c.Routing.Queue.BatchMinSlots < 0 {
		bad("routing.queue.batch_min_slots", "must not be negative")
	}
	if m := c.Usage.PublishMode; m != "batch" && m != "message" {
		bad("usage.publish_mode", "must be batch or message, got %q", m)
	}
	for key, addr := range map[string]string{"debug_listen": c.DebugListen, "metrics_listen": c.MetricsListen} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad(key, "must be host:port, got %q", addr)
		}
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	return errors.Join(errs...)
}

// notNegative reports every value of vals below zero under its key.
func notNegative[T int | time.Duration](bad func(key, format string, args ...any), vals map[string]T) {
	for key, v := range vals {
		if v < 0 {
			bad(key, "must be positive, got %v", v)
		}
	}
}

// OpenAccess reports whether the proxy would serve without any key: none
// in the file. Such a proxy must listen on loopback unless auth.open is
// set (CheckOpenAccess).
func (c *Config) OpenAccess() bool { return len(c.Auth.Keys) == 0 }

// CheckOpenAccess refuses a keyless proxy on a non-loopback address unless
// auth.open says so.
func (c *Config) CheckOpenAccess() error {
	if !c.OpenAccess() || c.Auth.Open || Loopback(c.Listen) {
		return nil
	}
	return fmt.Errorf("auth.keys: none configured and listen %q is not a loopback address: add keys (auth.keys or DROVER_AUTH_KEYS=id:key:admin) or set auth.open: true to serve everyone who can reach it", c.Listen)
}

// Loopback reports whether addr (host:port) only listens on this machine.
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
