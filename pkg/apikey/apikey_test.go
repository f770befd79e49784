package apikey

import (
	"strings"
	"testing"
)

func TestAllowsModel(t *testing.T) {
	for _, tc := range []struct {
		patterns []string
		model    string
		want     bool
	}{
		{nil, "anything", true},
		{[]string{"llama3*"}, "llama3:8b", true},
		{[]string{"llama3*"}, "llama3.2", true},
		{[]string{"llama3*"}, "qwen2:0.5b", false},
		{[]string{"qwen2"}, "qwen2:latest", true},
		{[]string{"qwen2:latest"}, "qwen2", true},
		{[]string{"qwen2"}, "qwen2:7b", false},
		{[]string{"a", "b*"}, "bee", true},
		{[]string{"library/*"}, "library/x", true},
	} {
		if got := AllowsModel(tc.patterns, tc.model); got != tc.want {
			t.Errorf("AllowsModel(%q, %q) = %v", tc.patterns, tc.model, got)
		}
	}
}

func TestRecordValidate(t *testing.T) {
	good := Record{ID: "team-a", Role: RoleClient, Digest: Digest(NewSecret()), Models: []string{"llama*"}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := Record{ID: "has space", Role: "root", Digest: "abc", Models: []string{"["}}
	err := bad.Validate()
	for _, want := range []string{"key id", "role", "digest", "model pattern"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
}

func TestSecretsDiffer(t *testing.T) {
	a, b := NewSecret(), NewSecret()
	if a == b || !strings.HasPrefix(a, SecretPrefix) || len(a) != len(SecretPrefix)+64 {
		t.Fatalf("secrets %q %q", a, b)
	}
}
