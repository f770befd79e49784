package keystore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/droverhq/drover/pkg/apikey"
)

// state is the state file: the last key set read from the bucket, digests
// only (what the bucket holds), so it is no more secret than the bucket.
type state struct {
	Bucket string          `json:"bucket"`
	Saved  time.Time       `json:"saved"`
	Keys   []apikey.Record `json:"keys"`
}

// loadState puts the saved set in force, before NATS answers. A missing
// file is an empty set; a damaged one is logged and ignored.
func (s *Store) loadState() {
	if s.opts.StateFile == "" {
		return
	}
	raw, err := os.ReadFile(s.opts.StateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	var st state
	if err == nil {
		err = json.Unmarshal(raw, &st)
	}
	if err == nil && st.Bucket != s.opts.Bucket {
		err = fmt.Errorf("saved from bucket %q, not %q", st.Bucket, s.opts.Bucket)
	}
	if err != nil {
		s.log.Error("ignoring the key state file: run-time keys work only once the key bucket answers", "file", s.opts.StateFile, "err", err)
		return
	}
	set := map[string]entry{}
	for _, r := range st.Keys {
		if err := r.Validate(); err != nil {
			s.log.Warn("skipping an invalid key in the state file", "file", s.opts.StateFile, "key", r.ID, "err", err)
			continue
		}
		r.Source = "bucket"
		set[r.ID] = entry{rec: r}
	}
	recs := sorted(set)
	s.mu.Lock()
	s.recs = set
	s.mu.Unlock()
	if s.opts.OnChange != nil {
		s.opts.OnChange(recs)
	}
	s.log.Warn("serving with the key set saved in the state file until the key bucket answers: keys revoked since then still work here until it does",
		"file", s.opts.StateFile, "keys", len(recs), "saved", st.Saved.UTC().Format(time.RFC3339), "age", time.Since(st.Saved).Round(time.Second).String())
}

// saveState writes recs to the state file (0600, replaced atomically). An
// empty set with no file yet writes nothing: no file means no keys.
func (s *Store) saveState(recs []apikey.Record) error {
	if s.opts.StateFile == "" {
		return nil
	}
	if len(recs) == 0 {
		if _, err := os.Stat(s.opts.StateFile); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
	}
	raw, err := json.MarshalIndent(state{Bucket: s.opts.Bucket, Saved: time.Now().UTC(), Keys: recs}, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(s.opts.StateFile)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".keys-*.json") // created 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the rename
	if _, err := tmp.Write(append(raw, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), s.opts.StateFile)
}
