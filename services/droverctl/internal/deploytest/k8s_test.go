package deploytest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// object is the part of a Kubernetes object these checks read.
type object struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Spec       struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
		Ports []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort any    `yaml:"targetPort"`
		} `yaml:"ports"`
		// HorizontalPodAutoscaler
		ScaleTargetRef struct {
			Kind, Name string
		} `yaml:"scaleTargetRef"`
		MinReplicas int `yaml:"minReplicas"`
		MaxReplicas int `yaml:"maxReplicas"`
	} `yaml:"spec"`
	raw map[string]any
}

type podSpec struct {
	TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
	SecurityContext               struct {
		RunAsNonRoot bool `yaml:"runAsNonRoot"`
	} `yaml:"securityContext"`
	Containers []container `yaml:"containers"`
	Volumes    []struct {
		Name      string `yaml:"name"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
	} `yaml:"volumes"`
}

type container struct {
	Name    string `yaml:"name"`
	Image   string `yaml:"image"`
	EnvFrom []struct {
		ConfigMapRef *struct{ Name string } `yaml:"configMapRef"`
		SecretRef    *struct{ Name string } `yaml:"secretRef"`
	} `yaml:"envFrom"`
	Env []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom any    `yaml:"valueFrom"`
	} `yaml:"env"`
	Command      []string `yaml:"command"`
	Args         []string `yaml:"args"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
	} `yaml:"volumeMounts"`
	Ports          []containerPort `yaml:"ports"`
	ReadinessProbe *probe          `yaml:"readinessProbe"`
	LivenessProbe  *probe          `yaml:"livenessProbe"`
}

type containerPort struct {
	Name          string `yaml:"name"`
	ContainerPort int    `yaml:"containerPort"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

func loadManifests(t *testing.T, root string) []object {
	t.Helper()
	dir := filepath.Join(root, "deploy", "k8s")
	var kust struct {
		Resources []string `yaml:"resources"`
		Images    []struct {
			Name string `yaml:"name"`
		} `yaml:"images"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join(dir, "kustomization.yaml"))), &kust); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if len(kust.Resources) == 0 {
		t.Fatal("kustomization.yaml lists no resources")
	}
	var objs []object
	for _, res := range kust.Resources {
		objs = append(objs, decodeManifests(t, filepath.Join(dir, res))...)
	}
	for _, img := range kust.Images {
		if !slices.ContainsFunc(objs, func(o object) bool {
			return slices.ContainsFunc(o.Spec.Template.Spec.Containers, func(c container) bool {
				return strings.Split(c.Image, ":")[0] == img.Name
			})
		}) {
			t.Errorf("kustomization images: %s is not used by any container", img.Name)
		}
	}
	return objs
}

// decodeManifests reads every object of one YAML file.
func decodeManifests(t *testing.T, path string) []object {
	t.Helper()
	var objs []object
	dec := yaml.NewDecoder(bytes.NewReader([]byte(readFile(t, path))))
	for {
		var node yaml.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		var o object
		if err := node.Decode(&o); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if err := node.Decode(&o.raw); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
			t.Fatalf("%s: an object without apiVersion, kind or name", path)
		}
		objs = append(objs, o)
	}
	return objs
}

// exampleSecret is deploy/k8s/secret.example.yaml's Secret: the one the
// operator creates, which the manifests reference but do not ship.
func exampleSecret(t *testing.T, root string) object {
	t.Helper()
	objs := decodeManifests(t, filepath.Join(root, "deploy", "k8s", "secret.example.yaml"))
	if len(objs) != 1 || objs[0].Kind != "Secret" || objs[0].Metadata.Name != "drover-secrets" {
		t.Fatalf("secret.example.yaml: want one Secret drover-secrets, got %d objects", len(objs))
	}
	return objs[0]
}

func find(objs []object, kind, name string) (object, bool) {
	for _, o := range objs {
		if o.Kind == kind && o.Metadata.Name == name {
			return o, true
		}
	}
	return object{}, false
}

func TestKubernetesManifests(t *testing.T) {
	root := repoRoot(t)
	objs := append(loadManifests(t, root), exampleSecret(t, root))
	for _, want := range []string{"Deployment/drover-proxy", "Service/drover", "HorizontalPodAutoscaler/drover-proxy",
		"Deployment/drover-aggregator", "ConfigMap/drover-config", "Secret/drover-secrets"} {
		kind, name, _ := strings.Cut(want, "/")
		if _, ok := find(objs, kind, name); !ok {
			t.Errorf("no %s", want)
		}
	}

	for _, o := range objs {
		switch o.Kind {
		case "Deployment", "StatefulSet":
			checkWorkload(t, objs, o)
		case "Service":
			sel, _ := o.raw["spec"].(map[string]any)["selector"].(map[string]any)
			matched := false
			for _, w := range objs {
				if (w.Kind == "Deployment" || w.Kind == "StatefulSet") && labelsMatch(sel, w.Spec.Template.Metadata.Labels) {
					matched = true
					for _, p := range o.Spec.Ports {
						if name, ok := p.TargetPort.(string); ok && !hasPort(w.Spec.Template.Spec, name) {
							t.Errorf("Service %s: targetPort %s is not a port of %s", o.Metadata.Name, name, w.Metadata.Name)
						}
					}
				}
			}
			if !matched {
				t.Errorf("Service %s selects no pods (%v)", o.Metadata.Name, sel)
			}
		case "HorizontalPodAutoscaler":
			ref := o.Spec.ScaleTargetRef
			if _, ok := find(objs, ref.Kind, ref.Name); !ok {
				t.Errorf("HPA %s scales %s/%s, which does not exist", o.Metadata.Name, ref.Kind, ref.Name)
			}
			if o.Spec.MinReplicas < 2 || o.Spec.MaxReplicas <= o.Spec.MinReplicas {
				t.Errorf("HPA %s: replicas %d..%d", o.Metadata.Name, o.Spec.MinReplicas, o.Spec.MaxReplicas)
			}
		}
	}
}

func labelsMatch(sel map[string]any, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != fmt.Sprint(v) {
			return false
		}
	}
	return true
}

func hasPort(spec podSpec, name string) bool {
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if p.Name == name {
				return true
			}
		}
	}
	return false
}

func checkWorkload(t *testing.T, objs []object, o object) {
	t.Helper()
	where := o.Kind + "/" + o.Metadata.Name
	if !labelsMatch(toAny(o.Spec.Selector.MatchLabels), o.Spec.Template.Metadata.Labels) {
		t.Errorf("%s: selector %v does not match its pod labels %v", where, o.Spec.Selector.MatchLabels, o.Spec.Template.Metadata.Labels)
	}
	spec := o.Spec.Template.Spec
	for _, c := range spec.Containers {
		for _, pr := range []*probe{c.ReadinessProbe, c.LivenessProbe} {
			if pr == nil || pr.HTTPGet == nil {
				continue
			}
			if name, ok := pr.HTTPGet.Port.(string); ok && !hasPort(spec, name) {
				t.Errorf("%s: probe port %s is not a container port", where, name)
			}
		}
		if !strings.HasPrefix(c.Image, "drover/") {
			continue
		}
		// A Drover container: non-root, ready-checked, and its whole
		// environment loads as a Drover config.
		if !spec.SecurityContext.RunAsNonRoot {
			t.Errorf("%s: runAsNonRoot is not set", where)
		}
		if c.ReadinessProbe == nil {
			t.Errorf("%s: no readiness probe", where)
		}
		env := map[string]string{}
		for _, ef := range c.EnvFrom {
			var src object
			var ok bool
			switch {
			case ef.ConfigMapRef != nil:
				src, ok = find(objs, "ConfigMap", ef.ConfigMapRef.Name)
			case ef.SecretRef != nil:
				src, ok = find(objs, "Secret", ef.SecretRef.Name)
			}
			if !ok {
				t.Errorf("%s: envFrom names a ConfigMap or Secret that does not exist", where)
			}
			for k, v := range src.Data {
				env[k] = v
			}
			for k, v := range src.StringData {
				env[k] = v
			}
		}
		for k, v := range containerEnv(t, objs, where, c) {
			env[k] = v
		}
		cfg := loadDroverEnv(t, where, env)
		if o.Metadata.Name == "drover-proxy" {
			if spec.TerminationGracePeriodSeconds < 50 {
				t.Errorf("%s: terminationGracePeriodSeconds %d: draining takes up to 30s and publishing up to 20s more", where, spec.TerminationGracePeriodSeconds)
			}
			if !slices.ContainsFunc(c.Ports, func(p containerPort) bool {
				return ":"+fmt.Sprint(p.ContainerPort) == cfg.Listen
			}) {
				t.Errorf("%s: listens on %s, which is not a container port", where, cfg.Listen)
			}
		}
	}
}

// containerEnv is a container's env list as the kubelet makes it: a value
// from a Secret or the pod is "from-<secret key or name>" (the Secret's
// key must exist in objs), and $(VAR) takes an earlier variable's value.
func containerEnv(t *testing.T, objs []object, where string, c container) map[string]string {
	t.Helper()
	env := map[string]string{}
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	for _, e := range c.Env {
		v := ref.ReplaceAllStringFunc(e.Value, func(m string) string {
			if val, ok := env[m[2:len(m)-1]]; ok {
				return val
			}
			t.Errorf("%s: %s refers to %s, which is not set before it", where, e.Name, m)
			return m
		})
		if sk := secretKeyRef(e.ValueFrom); sk != nil {
			sec, ok := find(objs, "Secret", sk.name)
			if _, has := sec.StringData[sk.key]; !ok || !has {
				t.Errorf("%s: %s reads %s/%s, which secret.example.yaml does not have", where, e.Name, sk.name, sk.key)
			}
			v = "from-" + sk.key
		} else if e.ValueFrom != nil {
			v = "from-" + strings.ToLower(e.Name) // a pod field: any string
		}
		env[e.Name] = v
	}
	return env
}

type secretRef struct{ name, key string }

// secretKeyRef reads valueFrom.secretKeyRef, nil for anything else.
func secretKeyRef(valueFrom any) *secretRef {
	m, _ := valueFrom.(map[string]any)
	r, _ := m["secretKeyRef"].(map[string]any)
	if r == nil {
		return nil
	}
	return &secretRef{name: fmt.Sprint(r["name"]), key: fmt.Sprint(r["key"])}
}

func toAny(m map[string]string) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	return out
}
