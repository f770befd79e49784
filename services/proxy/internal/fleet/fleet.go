// Package fleet knows the backends: what models each has and has loaded
// (cached per backend, stale-while-revalidate, one refresh at a time), which
// are healthy (probed in the background while their breaker is open), and
// which can serve a given model.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/droverhq/drover/pkg/config"
	"github.com/droverhq/drover/services/proxy/internal/backend"
	"github.com/droverhq/drover/services/proxy/internal/cache"
	"github.com/droverhq/drover/services/proxy/internal/catalog"
	"github.com/droverhq/drover/services/proxy/internal/dialect"
	"github.com/droverhq/drover/services/proxy/internal/routing"
)

// Fleet is safe for concurrent use. Backends and aliases are fixed at New.
type Fleet struct {
	Backends []*backend.Backend
	byName   map[string]*backend.Backend
	aliases  map[string][]config.Alias // public name (normalised) -> targets
	public   map[string][]config.Alias // public name as configured -> targets
	models   *cache.Cache[*catalog.List]
	loaded   *cache.Cache[*catalog.List]
	log      *slog.Logger
	probe    time.Duration

	// OnInvalidate, if set, is called after every local invalidation with
	// the backends affected (empty: all), so a fleet-wide subscriber can
	// forward it. Set it before serving.
	OnInvalidate func(backends []string)

	stop chan struct{}
	wg   sync.WaitGroup
}

// Metrics hooks, all optional.
type Hooks struct {
	Fetch func(kind, backend string, err error, took time.Duration)
}

// New builds the fleet and starts its prober; Close stops it.
func New(cfg *config.Config, log *slog.Logger, hooks Hooks) *Fleet {
	f := &Fleet{byName: map[string]*backend.Backend{}, aliases: map[string][]config.Alias{}, log: log, probe: cfg.Health.ProbeInterval, stop: make(chan struct{})}
	for _, bc := range cfg.Backends {
		b := backend.New(bc, cfg.Routing, cfg.Health)
		name := b.Name
		b.Health.OnChange(func(s backend.State) {
			log.Warn("backend health changed", "backend", name, "state", s.String())
			// What the backend has may have changed while it was away;
			// every replica should read it afresh.
			f.Invalidate(name)
		})
		f.Backends = append(f.Backends, b)
		f.byName[b.Name] = b
	}
	f.public = make(map[string][]config.Alias, len(cfg.Aliases))
	for public, targets := range cfg.Aliases {
		f.aliases[catalog.Normalize(public)] = targets
		f.public[public] = targets
	}
	onFetch := func(kind string) func(string, error, time.Duration) {
		return func(key string, err error, took time.Duration) {
			if hooks.Fetch != nil {
				hooks.Fetch(kind, key, err, took)
			}
		}
	}
	f.models = cache.New(func(ctx context.Context, name string) (*catalog.List, error) {
		b := f.byName[name]
		return f.fetch(ctx, b, b.Dialect.Models())
	}, cache.Options{TTL: cfg.Cache.ModelsTTL, Stale: cfg.Cache.ModelsStale, OnFetch: onFetch("models")})
	f.loaded = cache.New(func(ctx context.Context, name string) (*catalog.List, error) {
		b := f.byName[name]
		return f.fetch(ctx, b, b.Dialect.Loaded())
	}, cache.Options{TTL: cfg.Cache.LoadedTTL, Stale: cfg.Cache.LoadedStale, OnFetch: onFetch("loaded")})
	f.wg.Add(1)
	go f.probeLoop()
	return f
}

// Close stops the prober and background refreshes.
func (f *Fleet) Close() {
	close(f.stop)
	f.wg.Wait()
	f.models.Close()
	f.loaded.Close()
}

// Backend returns the backend named name.
func (f *Fleet) Backend(name string) (*backend.Backend, bool) {
	b, ok := f.byName[name]
	return b, ok
}

// Aliases returns the configured model aliases, public name as configured
// to targets. The map is shared: do not modify it.
func (f *Fleet) Aliases() map[string][]config.Alias { return f.public }

// Invalidate drops cached model lists and loaded models for the named
// backends, or for all with none named. It is the one call both local
// changes and fleet-wide invalidation messages make.
func (f *Fleet) Invalidate(backends ...string) {
	f.InvalidateLocal(backends...)
	if f.OnInvalidate != nil {
		f.OnInvalidate(backends)
	}
}

// InvalidateLocal drops entries without telling anyone else (for messages
// that came from elsewhere).
func (f *Fleet) InvalidateLocal(backends ...string) {
	f.models.Invalidate(backends...)
	f.loaded.Invalidate(backends...)
}

// NoteLoaded records that a backend has just loaded model to answer a
// request, so routing prefers it at once instead of after the next refresh
// of its loaded list (which then tells the whole truth again).
func (f *Fleet) NoteLoaded(name, model string) {
	f.loaded.Update(name, func(l *catalog.List) (*catalog.List, bool) {
		if l.Has(model) {
			return l, false
		}
		models := append(append([]catalog.Model(nil), l.Models...), catalog.Model{Name: model})
		return catalog.NewList(models), true
	})
}

// Models returns a backend's model list, from cache when fresh enough.
func (f *Fleet) Models(ctx context.Context, b *backend.Backend) (*catalog.List, error) {
	return f.models.Get(ctx, b.Name)
}

// Loaded returns a backend's loaded models, from cache when fresh enough.
func (f *Fleet) Loaded(ctx context.Context, b *backend.Backend) (*catalog.List, error) {
	return f.loaded.Get(ctx, b.Name)
}

// ErrModelNotFound means no backend has the model.
var ErrModelNotFound = errors.New("model not found")

// ErrNoHealthy means backends have the model but none is usable now.
var ErrNoHealthy = errors.New("no healthy backend has this model")

// Candidates lists the backends that can serve model on the given routes
// (backend.Serves; none given: any route), with their caps and whether they
// have it loaded. exclude skips backends already tried. Half-open backends
// are candidates only when no closed one is, and only for the request that
// holds their one trial (claimTrial): others get ErrRecovering.
func (f *Fleet) Candidates(ctx context.Context, model string, exclude map[string]bool, routes ...string) ([]routing.Candidate, error) {
	type target struct {
		b     *backend.Backend
		model string
	}
	var targets []target
	if aliased, ok := f.aliases[catalog.Normalize(model)]; ok {
		for _, a := range aliased {
			targets = append(targets, target{f.byName[a.Backend], a.Model})
		}
	} else {
		for _, b := range f.Backends {
			targets = append(targets, target{b, model})
		}
	}
	bs := make([]*backend.Backend, len(targets))
	for i, t := range targets {
		bs[i] = t.b
	}
	lists := f.modelLists(ctx, bs)
	var healthy []routing.Candidate
	var halfOpen []trialCandidate
	found := false
	for _, t := range targets {
		m, ok := lists[t.b.Name].Get(t.model)
		if !ok || exclude[t.b.Name] || !t.b.Serves(routes...) {
			continue
		}
		found = true
		c := routing.Candidate{Key: routing.Key{Backend: t.b.Name, Model: m.Name}, Cap: t.b.MaxConcurrency, Weight: t.b.Weight}
		if loaded, ok := f.loaded.Peek(t.b.Name); ok {
			c.Loaded = loaded.Has(t.model)
		}
		switch t.b.Health.State() {
		case backend.Closed:
			healthy = append(healthy, c)
		case backend.HalfOpen:
			halfOpen = append(halfOpen, trialCandidate{c, t.b})
		}
	}
	if len(healthy) > 0 {
		return healthy, nil
	}
	for _, h := range halfOpen {
		if claimTrial(ctx, h.b) {
			return []routing.Candidate{h.c}, nil
		}
	}
	switch {
	case len(halfOpen) > 0:
		return nil, ErrRecovering
	case found:
		return nil, ErrNoHealthy
	}
	return nil, ErrModelNotFound
}

// ErrRecovering means the backends that have the model are half-open and
// each already has its one trial request (or probe) running.
var ErrRecovering = fmt.Errorf("%w: the backends that have it are recovering, one trial request at a time", ErrNoHealthy)

type trialCandidate struct {
	c routing.Candidate
	b *backend.Backend
}

// claimTrial makes the request whose context ctx is the holder of b's
// half-open trial, until the backend's verdict or the request's end. The
// context is the owner, so that every Candidates call of one request
// (a handler's check that the model exists, then each attempt) sees the
// trial as its own. A context that never ends cannot hold a trial.
func claimTrial(ctx context.Context, b *backend.Backend) bool {
	if ctx.Done() == nil {
		return false
	}
	ok, fresh := b.Health.ClaimTrial(ctx)
	if fresh {
		context.AfterFunc(ctx, func() { b.Health.ReleaseTrial(ctx) })
	}
	return ok
}

// Reachable lists the backends that serve the given routes (backend.Serves)
// and whose breaker is not open, in configuration order: the targets of a
// fan-out.
func (f *Fleet) Reachable(routes ...string) []*backend.Backend {
	var out []*backend.Backend
	for _, b := range f.Backends {
		if b.Serves(routes...) && b.Health.State() != backend.Open {
			out = append(out, b)
		}
	}
	return out
}

// modelLists reads every backend's model list, fetching cold ones in
// parallel. A backend whose list cannot be had is simply absent.
func (f *Fleet) modelLists(ctx context.Context, bs []*backend.Backend) map[string]*catalog.List {
	out := make(map[string]*catalog.List, len(bs))
	var cold []*backend.Backend
	for _, b := range bs {
		if l, ok := f.models.Peek(b.Name); ok {
			out[b.Name] = l
			continue
		}
		cold = append(cold, b)
	}
	if len(cold) == 0 {
		return out
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, b := range cold {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if l, err := f.models.Get(ctx, b.Name); err == nil {
				mu.Lock()
				out[b.Name] = l
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

// ReadModels reads b's model list from b now, bypassing the cache, and
// keeps it there; ReadLoaded does the same for its loaded models. They are
// for listings a client asked for, which must show changes at once.
func (f *Fleet) ReadModels(ctx context.Context, b *backend.Backend) (*catalog.List, error) {
	return f.read(ctx, b, b.Dialect.Models(), f.models)
}

// ReadLoaded: see ReadModels.
func (f *Fleet) ReadLoaded(ctx context.Context, b *backend.Backend) (*catalog.List, error) {
	return f.read(ctx, b, b.Dialect.Loaded(), f.loaded)
}

func (f *Fleet) read(ctx context.Context, b *backend.Backend, l dialect.Listing, into *cache.Cache[*catalog.List]) (*catalog.List, error) {
	list, err := f.fetch(ctx, b, l)
	if err != nil {
		return nil, err
	}
	into.Set(b.Name, list)
	return list, nil
}

// fetch reads one of b's lists as its dialect says.
func (f *Fleet) fetch(ctx context.Context, b *backend.Backend, l dialect.Listing) (*catalog.List, error) {
	body, err := f.Get(ctx, b, l.Path)
	if err != nil {
		return nil, err
	}
	models, err := l.Decode(body)
	if err != nil {
		return nil, fmt.Errorf("decoding %s from %s: %w", l.Path, b.Name, err)
	}
	return catalog.NewList(models), nil
}

// maxListBody bounds a control-plane answer (a model list, a version).
const maxListBody = 64 << 20

// Get fetches path from b, feeding the breaker: a connect error opens it at
// once, a 5xx counts. It is what every control-plane read goes through.
func (f *Fleet) Get(ctx context.Context, b *backend.Backend, path string) ([]byte, error) {
	req, err := b.NewRequest(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := b.Client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			b.Health.Failure(err, IsConnectError(err))
		}
		return nil, fmt.Errorf("GET %s on %s: %w", path, b.Name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxListBody))
	if err != nil {
		b.Health.Failure(err, false)
		return nil, fmt.Errorf("reading %s from %s: %w", path, b.Name, err)
	}
	if resp.StatusCode >= 500 {
		err := fmt.Errorf("GET %s on %s: status %d", path, b.Name, resp.StatusCode)
		b.Health.Failure(err, false)
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s on %s: status %d", path, b.Name, resp.StatusCode)
	}
	return body, nil
}

// IsConnectError reports a failure to reach the server at all, which opens
// its breaker at once.
func IsConnectError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// probeLoop checks backends whose breaker is open, so that a backend that
// comes back is used again without waiting for traffic to find out.
func (f *Fleet) probeLoop() {
	defer f.wg.Done()
	t := time.NewTicker(f.probe)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		for _, b := range f.Backends {
			if b.Health.State() != backend.HalfOpen || !b.Health.BeginTrial() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), f.probe+time.Second)
			_, err := f.Get(ctx, b, b.Dialect.ProbePath())
			cancel()
			if err == nil {
				b.Health.Success()
				f.Invalidate(b.Name)
				f.log.Info("backend is back", "backend", b.Name)
			} else {
				b.Health.EndTrial()
				if b.Health.State() == backend.HalfOpen {
					b.Health.Failure(err, true)
				}
			}
		}
	}
}

// PeekModels returns a backend's cached model list without fetching.
func (f *Fleet) PeekModels(name string) (*catalog.List, bool) { return f.models.Stored(name) }
